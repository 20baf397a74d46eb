//! `ca:*`: proxyd's local certificate authority.

use securely_proto::proxy::{CaCertificate, ExportCaRequest};

use crate::errors;
use crate::sites::client;
use crate::target::Target;

/// The CA's certificate as proxyd exports it (never its key).
pub async fn fetch(target: &Target) -> anyhow::Result<CaCertificate> {
    Ok(client(target)
        .await?
        .export_ca(ExportCaRequest {})
        .await
        .map_err(|s| errors::rpc("proxyd", s))?
        .into_inner())
}

/// Prints the CA's certificate (PEM) on stdout, nothing else.
pub async fn export(target: &Target) -> anyhow::Result<()> {
    print!("{}", fetch(target).await?.pem);
    Ok(())
}
