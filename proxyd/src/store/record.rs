//! A site as stored in the `sites` tree: key = name, value = a [`StoredSite`],
//! bincode-encoded.

use serde::{Deserialize, Serialize};

use crate::sites::Site;

/// The current record.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredSite {
    /// `HOST:PORT`.
    pub target: String,
    /// The extra hostnames.
    pub hostnames: Vec<String>,
    /// Whether it is served over https.
    pub secure: bool,
}

/// The record before `secure` (plain HTTP only); read, never written.
#[derive(Debug, Deserialize)]
struct LegacySite {
    target: String,
    hostnames: Vec<String>,
}

impl StoredSite {
    /// The record of `site`.
    pub fn of(site: &Site) -> Self {
        Self {
            target: site.target.to_string(),
            hostnames: site.hostnames.clone(),
            secure: site.secure,
        }
    }

    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>, bincode::error::EncodeError> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
    }
}

/// The site a record stands for, checked again as a `LinkSite` would check it.
pub fn decode(key: &[u8], value: &[u8], tld: &str) -> Result<Site, String> {
    let name = std::str::from_utf8(key).map_err(|_| "the name is not UTF-8".to_string())?;
    let config = bincode::config::standard();
    let record = match bincode::serde::decode_from_slice::<StoredSite, _>(value, config) {
        Ok((record, used)) if used == value.len() => record,
        _ => {
            let (legacy, _): (LegacySite, usize) = bincode::serde::decode_from_slice(value, config)
                .map_err(|e| format!("undecodable record: {e}"))?;
            StoredSite {
                target: legacy.target,
                hostnames: legacy.hostnames,
                secure: false,
            }
        }
    };
    let mut site =
        Site::new(name, &record.target, &record.hostnames, tld).map_err(|e| e.to_string())?;
    site.secure = record.secure;
    Ok(site)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Legacy {
        target: String,
        hostnames: Vec<String>,
    }

    #[test]
    fn records_round_trip_and_legacy_ones_read_as_plain_http() {
        let mut site =
            Site::new("app", "127.0.0.1:3000", &["www.app.example".into()], "test").unwrap();
        site.secure = true;
        let value = StoredSite::of(&site).encode().unwrap();
        assert_eq!(decode(b"app", &value, "test").unwrap(), site);

        let legacy = Legacy {
            target: "127.0.0.1:3000".into(),
            hostnames: vec!["www.app.example".into()],
        };
        let value = bincode::serde::encode_to_vec(&legacy, bincode::config::standard()).unwrap();
        let read = decode(b"app", &value, "test").unwrap();
        assert!(!read.secure);
        assert_eq!(read.hostnames, site.hostnames);
        assert!(decode(b"app", b"\xff", "test").is_err());
    }
}
