//! The local CA in proxyd's sled tree (tree [`TLS_TREE`]).
//!
//! The CA is created on the first opening of the tree that finds none, and committed
//! (flushed and `fdatasync`ed, see [`securely_core::durable`]) before it is used: a CA
//! whose certificate was exported and trusted is never lost to a crash and replaced.

use std::sync::Arc;

use securely_core::durable::{CommitError, DurableTree};

use super::ca::{CaError, LocalCa, StoredCa};

/// The sled tree (inside proxyd's database) that holds the CA.
const TLS_TREE: &str = "tls";
/// The CA's key in [`TLS_TREE`].
const CA_KEY: &[u8] = b"ca";

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// sled failed.
    #[error("tls store: {0}")]
    Storage(#[from] sled::Error),
    /// The CA could not be made or parsed.
    #[error("local CA: {0}")]
    Ca(#[from] CaError),
    /// The stored record does not decode.
    #[error("local CA: the stored record does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A record could not be encoded.
    #[error("local CA: cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The new CA could not be committed.
    #[error("local CA: {0}")]
    Commit(#[from] CommitError),
}

/// proxyd's TLS records in its sled tree.
pub struct Vault {
    tree: sled::Tree,
    ca: Arc<LocalCa>,
}

impl Vault {
    /// Loads the CA from `durable`'s tree, or creates one for `tld` (and commits it) when
    /// there is none.
    pub fn open(durable: &mut DurableTree, tld: &str) -> Result<Self, VaultError> {
        let tree = durable.db().open_tree(TLS_TREE)?;
        let ca = match tree.get(CA_KEY)? {
            Some(record) => {
                let (stored, _): (StoredCa, usize) =
                    bincode::serde::decode_from_slice(&record, bincode::config::standard())?;
                LocalCa::load(&stored)?
            }
            None => {
                let ca = LocalCa::generate(tld)?;
                let record =
                    bincode::serde::encode_to_vec(ca.stored(), bincode::config::standard())?;
                tree.insert(CA_KEY, record)?;
                durable.commit()?;
                tracing::info!(
                    fingerprint = %ca.sha256_fingerprint(),
                    "created the local CA (trust it with `securelyctl ca:trust`)"
                );
                ca
            }
        };
        if !ca.permitted().permits(tld) {
            tracing::warn!(
                permitted = ?ca.permitted().dns_names(),
                "the local CA was made for another TLD than dns.tld ({tld}); names under \
                 {tld} get no certificate"
            );
        }
        Ok(Self {
            tree,
            ca: Arc::new(ca),
        })
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<LocalCa> {
        &self.ca
    }

    /// The tree, for the leaves kept beside the CA.
    #[allow(dead_code)]
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable(dir: &std::path::Path) -> DurableTree {
        let db = sled::Config::new().path(dir).open().unwrap();
        DurableTree::open(db, dir).unwrap()
    }

    #[test]
    fn the_ca_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let mut tree = durable(dir.path());
            let vault = Vault::open(&mut tree, "test").unwrap();
            vault.ca().sha256_fingerprint()
        };
        let mut tree = durable(dir.path());
        let vault = Vault::open(&mut tree, "other").unwrap();
        assert_eq!(vault.ca().sha256_fingerprint(), first);
        assert!(vault.ca().permitted().permits("app.test"));
        assert!(!vault.ca().permitted().permits("app.other"));
    }
}
