//! `site:*`: proxyd's sites.

use securely_proto::proxy::proxy_admin_client::ProxyAdminClient;
use securely_proto::proxy::{
    LinkSiteRequest, ListSitesRequest, SecureSiteRequest, UnlinkSiteRequest, UnsecureSiteRequest,
};
use std::time::Duration;

use serde_json::json;

use crate::errors;
use crate::output;
use crate::target::Target;

/// A client of proxyd's admin service.
pub async fn client(
    target: &Target,
) -> anyhow::Result<ProxyAdminClient<tonic::transport::Channel>> {
    Ok(ProxyAdminClient::new(
        target.daemon("proxyd", Duration::ZERO).await?,
    ))
}

pub async fn link(
    target: &Target,
    name: String,
    to: String,
    hostnames: Vec<String>,
) -> anyhow::Result<()> {
    let site = client(target)
        .await?
        .link_site(LinkSiteRequest {
            name,
            target: to,
            hostnames,
        })
        .await
        .map_err(|s| errors::rpc("proxyd", s))?
        .into_inner();
    println!(
        "{} -> {} ({})",
        site.name,
        site.target,
        site.serves.join(", ")
    );
    Ok(())
}

pub async fn unlink(target: &Target, name: String) -> anyhow::Result<()> {
    client(target)
        .await?
        .unlink_site(UnlinkSiteRequest { name: name.clone() })
        .await
        .map_err(|s| errors::rpc("proxyd", s))?;
    println!("{name} unlinked");
    Ok(())
}

pub async fn secure(target: &Target, name: String, secure: bool) -> anyhow::Result<()> {
    let mut client = client(target).await?;
    let site = if secure {
        client.secure_site(SecureSiteRequest { name }).await
    } else {
        client.unsecure_site(UnsecureSiteRequest { name }).await
    }
    .map_err(|s| errors::rpc("proxyd", s))?
    .into_inner();
    let scheme = if site.secure { "https" } else { "http" };
    let urls: Vec<String> = site
        .serves
        .iter()
        .map(|h| format!("{scheme}://{h}"))
        .collect();
    println!(
        "{} is served over {} ({})",
        site.name,
        scheme,
        urls.join(", ")
    );
    Ok(())
}

pub async fn list(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let sites = client(target)
        .await?
        .list_sites(ListSitesRequest {})
        .await
        .map_err(|s| errors::rpc("proxyd", s))?
        .into_inner()
        .sites;
    if as_json {
        let sites: Vec<_> = sites
            .iter()
            .map(|s| json!({"name": s.name, "target": s.target, "hostnames": s.hostnames, "serves": s.serves, "secure": s.secure, "leaf_not_after_unix": s.leaf_not_after_unix}))
            .collect();
        output::json(&json!(sites));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sites
        .into_iter()
        .map(|s| {
            let https = if s.secure { "yes" } else { "no" };
            vec![s.name, s.target, https.to_string(), s.serves.join(",")]
        })
        .collect();
    output::table(&["NAME", "TARGET", "HTTPS", "SERVES"], &rows);
    Ok(())
}
