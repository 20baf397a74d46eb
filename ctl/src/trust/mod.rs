//! `ca:trust` / `ca:untrust`: installing proxyd's local CA certificate where browsers and
//! tools look (the system store, NSS databases, Java's cacerts), and removing exactly what
//! was installed. Only the certificate is handled here: the key never leaves proxyd.
//!
//! Every store reports one [`Line`]; a store that fails does not stop the others. Where
//! the stores are comes from [`Stores`], which the command builds from this machine
//! ([`Stores::discover`]) and tests build over temporary directories.

mod command;
mod java;
mod nss;
mod run;
mod system;
mod user;

use std::fmt;

pub use command::{ca_trust, ca_untrust};
pub use java::JavaStore;
pub use nss::NssStores;
pub use system::SystemStore;
pub use user::User;

/// The start of the NSS nickname of every certificate `ca:trust` adds (then 16 hex
/// digits of its SHA-256 fingerprint): `ca:untrust` removes each one starting so.
pub const NSS_NICKNAME_PREFIX: &str = "Securely local CA ";
/// The start of the keytool alias of every certificate `ca:trust` adds (keytool lowers
/// aliases' case).
pub const JAVA_ALIAS_PREFIX: &str = "securely-local-ca-";
/// How many hex digits of the fingerprint name an entry.
const FINGERPRINT_DIGITS: usize = 16;

/// A CA certificate to trust, as proxyd exports it.
#[derive(Debug, Clone)]
pub struct Ca {
    pem: String,
    fingerprint: String,
}

/// What is wrong with an exported CA certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA certificate is not one PEM certificate")]
    NotPem,
    #[error("the CA fingerprint {0:?} is not a SHA-256 hex digest")]
    BadFingerprint(String),
}

impl Ca {
    /// A CA from its PEM and its SHA-256 fingerprint (hex, any case, colons allowed).
    pub fn new(pem: &str, sha256_fingerprint: &str) -> Result<Self, CaError> {
        let pem = pem.trim();
        if !pem.starts_with("-----BEGIN CERTIFICATE-----")
            || !pem.ends_with("-----END CERTIFICATE-----")
            || pem.matches("-----BEGIN").count() != 1
        {
            return Err(CaError::NotPem);
        }
        let fingerprint: String = sha256_fingerprint
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CaError::BadFingerprint(sha256_fingerprint.to_string()));
        }
        Ok(Self {
            pem: format!("{pem}\n"),
            fingerprint,
        })
    }

    /// The certificate, PEM, ending in a newline.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn short_fingerprint(&self) -> &str {
        &self.fingerprint[..FINGERPRINT_DIGITS]
    }

    /// The nickname in NSS databases.
    pub fn nss_nickname(&self) -> String {
        format!("{NSS_NICKNAME_PREFIX}{}", self.short_fingerprint())
    }

    /// The alias in Java keystores.
    pub fn java_alias(&self) -> String {
        format!("{JAVA_ALIAS_PREFIX}{}", self.short_fingerprint())
    }
}

/// What happened to one store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// `ca:trust` added the certificate.
    Trusted,
    /// `ca:trust` found it there already.
    AlreadyTrusted,
    /// `ca:untrust` removed what `ca:trust` had added.
    Removed,
    /// `ca:untrust` found nothing of `ca:trust`'s there.
    NotTrusted,
    /// This machine has no such store.
    NotPresent,
    /// The store could not be changed; why, and what to do.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Trusted => f.write_str("trusted"),
            Outcome::AlreadyTrusted => f.write_str("already trusted"),
            Outcome::Removed => f.write_str("removed"),
            Outcome::NotTrusted => f.write_str("not trusted"),
            Outcome::NotPresent => f.write_str("not present"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// One store's report: which store, what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The kind of store: `system`, `nss`, `firefox`, `java`.
    pub store: &'static str,
    /// Where it is (empty when it is not present at all).
    pub location: String,
    /// What happened.
    pub outcome: Outcome,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{:<8}{}", self.store, self.outcome)
        } else {
            write!(f, "{:<8}{}: {}", self.store, self.location, self.outcome)
        }
    }
}

/// The message for a store that only root may change.
pub(crate) const NEEDS_ROOT: &str = "needs root, run with sudo";

/// Every store `ca:trust` knows, wherever they are on this machine (or in a test).
#[derive(Debug, Clone)]
pub struct Stores {
    /// The system store, if this system has one `ca:trust` knows.
    pub system: Option<SystemStore>,
    /// The user's NSS databases.
    pub nss: NssStores,
    /// Java's cacerts, if a JDK or JRE is installed.
    pub java: Option<JavaStore>,
}

impl Stores {
    /// The stores of this machine and of the user running `securelyctl` (under sudo: of
    /// the user who ran sudo).
    pub fn discover() -> Self {
        Self {
            system: SystemStore::discover(),
            nss: NssStores::new(User::current()),
            java: JavaStore::discover(),
        }
    }

    /// Installs `ca` in every store.
    pub fn trust(&self, ca: &Ca) -> Vec<Line> {
        let mut lines = vec![match &self.system {
            Some(system) => system.trust(ca),
            None => not_present("system"),
        }];
        lines.extend(self.nss.trust(ca));
        lines.push(match &self.java {
            Some(java) => java.trust(ca),
            None => not_present("java"),
        });
        lines
    }

    /// Removes from every store what [`Stores::trust`] adds (for any CA it was given).
    pub fn untrust(&self) -> Vec<Line> {
        let mut lines = vec![match &self.system {
            Some(system) => system.untrust(),
            None => not_present("system"),
        }];
        lines.extend(self.nss.untrust());
        lines.push(match &self.java {
            Some(java) => java.untrust(),
            None => not_present("java"),
        });
        lines
    }
}

fn not_present(store: &'static str) -> Line {
    Line {
        store,
        location: String::new(),
        outcome: Outcome::NotPresent,
    }
}

#[cfg(test)]
pub(crate) mod testca;
