//! What `securelyctl status` shows of https: the local CA's fingerprint and each secure
//! site's certificate expiry, asked of proxyd.

use securely_proto::proxy::ListSitesRequest;
use serde_json::json;

use crate::ca;
use crate::sites::client;
use crate::target::Target;

/// What `status` shows of https: the CA and each secure site's certificate.
pub struct HttpsSummary {
    /// The CA's SHA-256 fingerprint.
    pub fingerprint: String,
    /// When the CA expires (Unix seconds).
    pub ca_not_after: i64,
    /// Each secure site: its name, primary hostname, and when its certificate expires
    /// (Unix seconds; 0: none issued yet).
    pub sites: Vec<(String, String, i64)>,
}

impl HttpsSummary {
    /// Asks proxyd; `None` when it does not answer (status goes on without it).
    pub async fn fetch(target: &Target) -> Option<Self> {
        let ca = ca::fetch(target).await.ok()?;
        let sites = client(target)
            .await
            .ok()?
            .list_sites(ListSitesRequest {})
            .await
            .ok()?
            .into_inner()
            .sites
            .into_iter()
            .filter(|site| site.secure)
            .map(|site| {
                let host = site.serves.first().cloned().unwrap_or_default();
                (site.name, host, site.leaf_not_after_unix)
            })
            .collect();
        Some(Self {
            fingerprint: ca.sha256_fingerprint,
            ca_not_after: ca.not_after_unix,
            sites,
        })
    }

    /// For `status --json`.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "ca_sha256_fingerprint": self.fingerprint,
            "ca_not_after_unix": self.ca_not_after,
            "sites": self.sites.iter().map(|(name, host, expiry)| json!({
                "name": name, "hostname": host, "leaf_not_after_unix": expiry,
            })).collect::<Vec<_>>(),
        })
    }

    /// For `status`: a few lines.
    pub fn print(&self) {
        println!(
            "\nhttps: local CA {} (expires {}; trust it with `securelyctl ca:trust`)",
            self.fingerprint,
            date(self.ca_not_after)
        );
        for (_, host, expiry) in &self.sites {
            match expiry {
                0 => println!("  https://{host}: certificate issued on the first connection"),
                at => println!("  https://{host}: certificate expires {}", date(*at)),
            }
        }
    }
}

/// A Unix time as a UTC date and time, `YYYY-MM-DD HH:MM UTC`.
fn date(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        ),
        Err(_) => unix.to_string(),
    }
}
