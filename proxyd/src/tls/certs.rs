//! The certificates proxyd serves, shared by the TLS handshakes and the site store.
//!
//! Leaves are minted on first use (see [`super::sni`] for which), kept in memory and
//! checked on every handshake: one that no longer names what it must, came from another
//! CA or has less than [`super::leaf::RENEW_BEFORE`] left is replaced there and then.
//! The fallback certificate and the secure sites' leaves are also kept in the sled tree:
//! the store loads them when it opens the tree ([`Certs::attach`]) and saves the ones
//! minted since ([`Certs::take_unsaved`]) when it closes it, so a restart or a reload
//! (both hand the tree over) serves the same certificates. A leaf minted after the tree
//! was handed over, or before a crash, is not saved: the next instance mints its own.
//! Leaves for names that are no secure site are kept in memory only, at most
//! [`MAX_NAME_LEAVES`] of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;

use super::ca::LocalCa;
use super::leaf::{Leaf, StoredLeaf, unix_now};
use super::names::FALLBACK_NAME;
use super::sni::{self, CertFor};
use crate::routing::Routes;

/// The most leaves kept for names that are no secure site (each is a few hundred bytes
/// and a key); past it they are all dropped, and minted again on demand.
pub const MAX_NAME_LEAVES: usize = 1024;
/// The key of the fallback certificate among the kept leaves.
const FALLBACK_KEY: &str = "fallback";

/// The CA, the leaves, and what picks between them.
#[derive(Debug)]
pub struct Certs {
    routes: Arc<Routes>,
    ca: ArcSwapOption<LocalCa>,
    /// The fallback and the secure sites' leaves (`site:NAME`), saved in the tree.
    kept: Mutex<HashMap<String, Arc<Leaf>>>,
    /// Keys of `kept` minted since the tree last saved them.
    unsaved: Mutex<HashSet<String>>,
    /// Leaves for single names, memory only.
    names: Mutex<HashMap<String, Arc<Leaf>>>,
}

impl Certs {
    /// No CA yet (see [`Certs::attach`]); sites come from `routes`.
    pub fn new(routes: Arc<Routes>) -> Arc<Self> {
        Arc::new(Self {
            routes,
            ca: ArcSwapOption::empty(),
            kept: Mutex::default(),
            unsaved: Mutex::default(),
            names: Mutex::default(),
        })
    }

    /// Takes the CA and the leaves the tree holds (those that still fit are kept; leaves
    /// minted meanwhile in memory win).
    pub fn attach(&self, ca: Arc<LocalCa>, stored: Vec<(String, StoredLeaf)>) {
        let fingerprint = ca.sha256_fingerprint();
        self.ca.store(Some(ca));
        let now = unix_now();
        let mut kept = lock(&self.kept);
        for (key, record) in stored {
            let names = record.names.clone();
            match Leaf::load(record) {
                Ok(leaf) if leaf.fits(&names, &fingerprint, now) => {
                    kept.entry(key).or_insert_with(|| Arc::new(leaf));
                }
                Ok(_) => tracing::debug!(%key, "stored leaf no longer fits; minted anew on use"),
                Err(e) => tracing::warn!(%key, "stored leaf skipped: {e}"),
            }
        }
    }

    /// The leaves minted since the last call, to save in the tree.
    pub fn take_unsaved(&self) -> Vec<(String, StoredLeaf)> {
        let keys: Vec<String> = lock(&self.unsaved).drain().collect();
        let kept = lock(&self.kept);
        keys.into_iter()
            .filter_map(|key| Some((key.clone(), kept.get(&key)?.stored().clone())))
            .collect()
    }

    /// The CA, once a tree has been opened.
    pub fn ca(&self) -> Option<Arc<LocalCa>> {
        self.ca.load_full()
    }

    /// What the handshake for `server_name` gets.
    pub fn choose(&self, server_name: Option<&str>) -> CertFor {
        match self.ca.load().as_deref() {
            Some(ca) => sni::choose(server_name, &self.routes, ca.permitted()),
            None => CertFor::Refused,
        }
    }

    /// The certificate for `choice`, minted (or renewed) when needed; `None` when the CA
    /// is missing or refuses.
    pub fn certificate(&self, choice: &CertFor) -> Option<Arc<CertifiedKey>> {
        let ca = self.ca.load_full()?;
        let leaf = match choice {
            CertFor::Refused => return None,
            CertFor::Fallback => self.kept_leaf(&ca, FALLBACK_KEY, &[FALLBACK_NAME.to_string()])?,
            CertFor::Site(route) => {
                let names = sni::site_names(route, ca.permitted());
                self.kept_leaf(&ca, &site_key(&route.site), &names)?
            }
            CertFor::Name(name) => self.name_leaf(&ca, name)?,
        };
        Some(leaf.certified().clone())
    }

    /// When the current leaf of site `name` expires (Unix seconds), if it has one.
    pub fn site_expiry(&self, name: &str) -> Option<i64> {
        lock(&self.kept)
            .get(&site_key(name))
            .map(|leaf| leaf.not_after_unix())
    }

    fn kept_leaf(&self, ca: &LocalCa, key: &str, names: &[String]) -> Option<Arc<Leaf>> {
        let fingerprint = ca.sha256_fingerprint();
        if let Some(leaf) = lock(&self.kept).get(key)
            && leaf.fits(names, &fingerprint, unix_now())
        {
            return Some(leaf.clone());
        }
        let leaf = Arc::new(mint(ca, names)?);
        tracing::info!(%key, ?names, not_after = leaf.not_after_unix(), "issued a certificate");
        lock(&self.kept).insert(key.to_string(), leaf.clone());
        lock(&self.unsaved).insert(key.to_string());
        Some(leaf)
    }

    fn name_leaf(&self, ca: &LocalCa, name: &str) -> Option<Arc<Leaf>> {
        let names = [name.to_string()];
        let fingerprint = ca.sha256_fingerprint();
        if let Some(leaf) = lock(&self.names).get(name)
            && leaf.fits(&names, &fingerprint, unix_now())
        {
            return Some(leaf.clone());
        }
        let leaf = Arc::new(mint(ca, &names)?);
        let mut cache = lock(&self.names);
        if cache.len() >= MAX_NAME_LEAVES {
            cache.clear();
        }
        cache.insert(name.to_string(), leaf.clone());
        Some(leaf)
    }
}

/// The key of site `name`'s leaf among the kept leaves.
fn site_key(name: &str) -> String {
    format!("site:{name}")
}

fn mint(ca: &LocalCa, names: &[String]) -> Option<Leaf> {
    Leaf::mint(ca, names)
        .map_err(|e| tracing::error!(?names, "cannot issue a certificate: {e}"))
        .ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a map operation that cannot leave it torn.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingTable;
    use crate::sites::Site;

    fn certs_with_app() -> Arc<Certs> {
        let mut app = Site::new("app", "127.0.0.1:1", &[], "test").unwrap();
        app.secure = true;
        let routes = Arc::new(Routes::default());
        routes.publish(RoutingTable::build([&app], "test"));
        let certs = Certs::new(routes);
        certs.attach(Arc::new(LocalCa::generate("test").unwrap()), Vec::new());
        certs
    }

    #[test]
    fn a_sites_leaf_is_minted_once_kept_and_saved_once() {
        let certs = certs_with_app();
        assert_eq!(certs.site_expiry("app"), None);
        let choice = certs.choose(Some("app.test"));
        let first = certs.certificate(&choice).unwrap();
        let again = certs
            .certificate(&certs.choose(Some("x.app.test")))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one leaf, wildcard included");
        assert!(certs.site_expiry("app").is_some());

        let unsaved = certs.take_unsaved();
        assert_eq!(unsaved.len(), 1);
        assert_eq!(unsaved[0].0, "site:app");
        assert!(certs.take_unsaved().is_empty());

        // Another instance loads it and serves the very same certificate.
        let other = Certs::new(Arc::new(Routes::default()));
        other.attach(certs.ca().unwrap(), unsaved);
        assert_eq!(other.site_expiry("app"), certs.site_expiry("app"));
    }

    #[test]
    fn names_outside_the_tld_get_nothing_and_other_names_their_own_leaf() {
        let certs = certs_with_app();
        assert!(
            certs
                .certificate(&certs.choose(Some("example.com")))
                .is_none()
        );
        let a = certs
            .certificate(&certs.choose(Some("nosite.test")))
            .unwrap();
        let b = certs
            .certificate(&certs.choose(Some("nosite.test")))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(certs.certificate(&certs.choose(None)).is_some());
        let saved: Vec<String> = certs.take_unsaved().into_iter().map(|(k, _)| k).collect();
        assert_eq!(saved, ["fallback"], "names that are no site are not saved");
    }

    #[test]
    fn without_a_ca_nothing_is_served() {
        let certs = Certs::new(Arc::new(Routes::default()));
        assert_eq!(certs.choose(None), CertFor::Refused);
        assert!(certs.certificate(&CertFor::Fallback).is_none());
    }
}
