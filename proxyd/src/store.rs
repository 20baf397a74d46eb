//! The sites, kept in proxyd's sled tree and mirrored in memory.
//!
//! sled is the record; the in-memory map answers `ListSites` and the conflict checks, and
//! every change rebuilds the routing table and publishes it to the proxy. A write is
//! flushed before the call returns, so an acknowledged `LinkSite` survives a crash.
//! Writes are serialised by one mutex, which makes "check the hostnames are free, then
//! write" atomic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::routing::{Routes, RoutingTable};
use crate::sites::{InvalidField, Site, normalize_tld, primary_hostname};

/// The sled tree (inside proxyd's database) that holds one record per site.
const SITES_TREE: &str = "sites";

/// A site as stored: key = name, value = this record, bincode-encoded.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSite {
    target: String,
    hostnames: Vec<String>,
}

/// Why a change to the sites was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An argument does not pass the checks.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A hostname is already served by another site.
    #[error("{field}: {hostname} is already served by site {site:?}")]
    Taken {
        /// `name` (for `NAME.<tld>`) or `hostnames`.
        field: &'static str,
        /// The contested hostname.
        hostname: String,
        /// The site that serves it.
        site: String,
    },
    /// There is no site by that name.
    #[error("no site named {0:?}")]
    NotFound(String),
    /// sled failed.
    #[error("site store: {0}")]
    Storage(#[from] sled::Error),
    /// A record could not be encoded.
    #[error("site store: cannot encode site: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// The sled-backed set of sites.
pub struct SiteStore {
    db: sled::Db,
    tree: sled::Tree,
    tld: String,
    sites: Mutex<BTreeMap<String, Site>>,
    routes: Arc<Routes>,
}

impl SiteStore {
    /// Loads the sites from proxyd's database and publishes their routing table. Records
    /// that no longer pass the checks (say, after the TLD changed) are skipped with a
    /// warning, never fatal.
    pub fn open(db: sled::Db, tld: &str, routes: Arc<Routes>) -> Result<Self, StoreError> {
        let tree = db.open_tree(SITES_TREE)?;
        let tld = normalize_tld(tld);
        let mut sites = BTreeMap::new();
        for record in tree.iter() {
            let (key, value) = record?;
            match decode(&key, &value, &tld) {
                Ok(site) => match first_conflict(&sites, &site, &tld) {
                    None => {
                        sites.insert(site.name.clone(), site);
                    }
                    Some(taken) => {
                        tracing::warn!(site = %site.name, "stored site skipped: {taken}")
                    }
                },
                Err(problem) => tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    "stored site skipped: {problem}"
                ),
            }
        }
        routes.publish(RoutingTable::build(sites.values(), &tld));
        Ok(Self {
            db,
            tree,
            tld,
            sites: Mutex::new(sites),
            routes,
        })
    }

    /// The local TLD every site name lives under.
    pub fn tld(&self) -> &str {
        &self.tld
    }

    /// Creates or replaces the site `name`.
    pub fn link(&self, name: &str, target: &str, hostnames: &[String]) -> Result<Site, StoreError> {
        let site = Site::new(name, target, hostnames, &self.tld)?;
        let mut sites = self.lock();
        if let Some(taken) = first_conflict(&sites, &site, &self.tld) {
            return Err(taken);
        }
        let record = StoredSite {
            target: site.target.to_string(),
            hostnames: site.hostnames.clone(),
        };
        let value = bincode::serde::encode_to_vec(&record, bincode::config::standard())?;
        self.tree.insert(site.name.as_bytes(), value)?;
        self.tree.flush()?;
        sites.insert(site.name.clone(), site.clone());
        self.publish(&sites);
        Ok(site)
    }

    /// Removes the site `name`.
    pub fn unlink(&self, name: &str) -> Result<Site, StoreError> {
        let name = crate::sites::parse_name(name)?;
        let mut sites = self.lock();
        if !sites.contains_key(&name) {
            return Err(StoreError::NotFound(name));
        }
        self.tree.remove(name.as_bytes())?;
        self.tree.flush()?;
        let removed = sites.remove(&name).ok_or(StoreError::NotFound(name))?;
        self.publish(&sites);
        Ok(removed)
    }

    /// Every site, by name.
    pub fn list(&self) -> Vec<Site> {
        self.lock().values().cloned().collect()
    }

    /// How many sites there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Flushes and closes the database; the tree's lock is released once this returns
    /// (give or take sled's IO threads finishing, see the build notes).
    pub fn close(self) -> Result<(), sled::Error> {
        self.db.flush()?;
        drop(self.tree);
        drop(self.db);
        Ok(())
    }

    /// Flushes without closing (when other handles may still be alive).
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(drop)
    }

    fn publish(&self, sites: &BTreeMap<String, Site>) {
        self.routes
            .publish(RoutingTable::build(sites.values(), &self.tld));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Site>> {
        // The map is only replaced whole under the lock: a panic cannot leave it torn.
        self.sites.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first hostname of `site` that another site (not one of the same name, which it
/// replaces) already serves.
fn first_conflict(sites: &BTreeMap<String, Site>, site: &Site, tld: &str) -> Option<StoreError> {
    let wanted = std::iter::once(("name", primary_hostname(&site.name, tld)))
        .chain(site.hostnames.iter().map(|h| ("hostnames", h.clone())));
    for (field, hostname) in wanted {
        let holder = sites
            .values()
            .filter(|other| other.name != site.name)
            .find(|other| other.serves(tld).contains(&hostname));
        if let Some(other) = holder {
            return Some(StoreError::Taken {
                field,
                hostname,
                site: other.name.clone(),
            });
        }
    }
    None
}

fn decode(key: &[u8], value: &[u8], tld: &str) -> Result<Site, String> {
    let name = std::str::from_utf8(key).map_err(|_| "the name is not UTF-8".to_string())?;
    let (record, _): (StoredSite, usize) =
        bincode::serde::decode_from_slice(value, bincode::config::standard())
            .map_err(|e| format!("undecodable record: {e}"))?;
    Site::new(name, &record.target, &record.hostnames, tld).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> (SiteStore, Arc<Routes>) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let routes = Arc::new(Routes::default());
        (
            SiteStore::open(db, "Test.", routes.clone()).unwrap(),
            routes,
        )
    }

    #[test]
    fn sites_are_linked_replaced_unlinked_and_routed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, routes) = store(dir.path());
        let site = store
            .link("App", "127.0.0.1:3000", &["www.app.example".into()])
            .unwrap();
        assert_eq!(site.name, "app");
        assert_eq!(routes.snapshot().route("app.test").unwrap().site, "app");
        assert_eq!(
            routes.snapshot().route("www.app.example").unwrap().site,
            "app"
        );

        store.link("app", "localhost:4000", &[]).unwrap();
        assert!(routes.snapshot().route("www.app.example").is_none());
        assert_eq!(
            routes
                .snapshot()
                .route("app.test")
                .unwrap()
                .target
                .to_string(),
            "localhost:4000"
        );

        store.unlink("APP").unwrap();
        assert!(routes.snapshot().is_empty());
        assert!(matches!(store.unlink("app"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_hostname_belongs_to_one_site() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(dir.path());
        store
            .link("a", "127.0.0.1:1", &["shared.example".into()])
            .unwrap();
        let err = store
            .link("b", "127.0.0.1:2", &["shared.example".into()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostnames: shared.example is already served by site \"a\""
        );
        let err = store
            .link("c", "127.0.0.1:2", &["a.test".into()])
            .unwrap_err();
        assert!(matches!(err, StoreError::Taken { ref site, .. } if site == "a"));
        // A site may keep its own hostnames when it is replaced.
        store
            .link("a", "127.0.0.1:9", &["shared.example".into()])
            .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn sites_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = store(dir.path());
            store
                .link("a", "[::1]:8080", &["x.example".into()])
                .unwrap();
            store.link("b", "localhost:1", &[]).unwrap();
            store.close().unwrap();
        }
        let (store, routes) = store(dir.path());
        let names: Vec<_> = store.list().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(
            routes
                .snapshot()
                .route("x.example")
                .unwrap()
                .target
                .to_string(),
            "[::1]:8080"
        );
    }

    #[test]
    fn undecodable_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.open_tree(SITES_TREE)
                .unwrap()
                .insert("junk", &b"\xff\xff"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let (store, _) = store(dir.path());
        assert!(store.list().is_empty());
        store.link("junk", "127.0.0.1:1", &[]).unwrap();
    }
}
