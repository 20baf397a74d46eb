//! `ca:*`: proxyd's local certificate authority.

use securely_proto::proxy::ExportCaRequest;

use crate::errors;
use crate::sites::client;
use crate::target::Target;

/// Prints the CA's certificate (PEM) on stdout, nothing else.
pub async fn export(target: &Target) -> anyhow::Result<()> {
    let ca = client(target)
        .await?
        .export_ca(ExportCaRequest {})
        .await
        .map_err(|s| errors::rpc("proxyd", s))?
        .into_inner();
    print!("{}", ca.pem);
    Ok(())
}
