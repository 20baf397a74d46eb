//! The local CA and the kept leaves in proxyd's sled tree (tree [`TLS_TREE`]).
//!
//! The CA is created on the first opening of the tree that finds none, and committed
//! (flushed and `fdatasync`ed, see [`securely_core::durable`]) before it is used: a CA
//! whose certificate was exported and trusted is never lost to a crash and replaced.
//! Leaves are a cache ([`super::certs`]): loaded at opening, written (not committed: a
//! lost one is minted again) when the tree is closed.

use std::sync::Arc;

use securely_core::durable::{CommitError, DurableTree};

use super::ca::{CaError, LocalCa, StoredCa};
use super::certs::Certs;
use super::leaf::StoredLeaf;

/// The sled tree (inside proxyd's database) that holds the CA.
const TLS_TREE: &str = "tls";
/// The CA's key in [`TLS_TREE`].
const CA_KEY: &[u8] = b"ca";
/// The prefix of the kept leaves' keys in [`TLS_TREE`] (then the key [`Certs`] uses).
const LEAF_PREFIX: &str = "leaf/";

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
    certs: Arc<Certs>,
}

impl Vault {
    /// Loads the CA from `durable`'s tree, or creates one for `tld` (and commits it) when
    /// there is none, and hands it and the kept leaves to `certs`.
    pub fn open(
        durable: &mut DurableTree,
        tld: &str,
        certs: Arc<Certs>,
    ) -> Result<Self, VaultError> {
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
        let ca = Arc::new(ca);
        certs.attach(ca.clone(), leaves(&tree));
        Ok(Self { tree, ca, certs })
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<LocalCa> {
        &self.ca
    }

    /// The certificates served.
    pub fn certs(&self) -> &Arc<Certs> {
        &self.certs
    }

    /// Writes the leaves minted since the tree was opened (the caller flushes).
    pub fn save_leaves(&self) -> Result<(), VaultError> {
        for (key, leaf) in self.certs.take_unsaved() {
            let record = bincode::serde::encode_to_vec(&leaf, bincode::config::standard())?;
            self.tree.insert(format!("{LEAF_PREFIX}{key}"), record)?;
        }
        Ok(())
    }
}

/// The kept leaves in `tree`; undecodable ones are skipped with a warning.
fn leaves(tree: &sled::Tree) -> Vec<(String, StoredLeaf)> {
    let mut leaves = Vec::new();
    for record in tree.scan_prefix(LEAF_PREFIX) {
        let decoded = record.map_err(|e| e.to_string()).and_then(|(key, value)| {
            let key = String::from_utf8_lossy(&key[LEAF_PREFIX.len()..]).into_owned();
            let (leaf, _): (StoredLeaf, usize) =
                bincode::serde::decode_from_slice(&value, bincode::config::standard())
                    .map_err(|e| format!("{key}: {e}"))?;
            Ok((key, leaf))
        });
        match decoded {
            Ok(leaf) => leaves.push(leaf),
            Err(e) => tracing::warn!("stored leaf skipped: {e}"),
        }
    }
    leaves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::sni::CertFor;

    fn durable(dir: &std::path::Path) -> DurableTree {
        let db = sled::Config::new().path(dir).open().unwrap();
        DurableTree::open(db, dir).unwrap()
    }

    fn certs() -> Arc<Certs> {
        Certs::new(Arc::new(crate::routing::Routes::default()))
    }

    #[test]
    fn the_ca_is_created_once_and_kept_with_the_leaves_saved() {
        let dir = tempfile::tempdir().unwrap();
        let (first, fallback) = {
            let mut tree = durable(dir.path());
            let vault = Vault::open(&mut tree, "test", certs()).unwrap();
            let fallback = vault.certs().certificate(&CertFor::Fallback).unwrap();
            vault.save_leaves().unwrap();
            tree.commit().unwrap();
            (vault.ca().sha256_fingerprint(), fallback)
        };
        let mut tree = durable(dir.path());
        let vault = Vault::open(&mut tree, "other", certs()).unwrap();
        assert_eq!(vault.ca().sha256_fingerprint(), first);
        assert!(vault.ca().permitted().permits("app.test"));
        assert!(!vault.ca().permitted().permits("app.other"));
        let again = vault.certs().certificate(&CertFor::Fallback).unwrap();
        assert_eq!(again.cert, fallback.cert, "the same fallback certificate");
    }
}
