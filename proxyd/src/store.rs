//! The sites, kept in proxyd's sled tree and mirrored in memory.
//!
//! sled is the record. Every change is committed before the call returns (sled's flush and
//! `fdatasync`, see [`securely_core::durable`]: an acknowledged `LinkSite` survives a
//! crash and a power cut), then published: a new snapshot of the sites (for `ListSites`
//! and the status line) and a new routing table (for the proxy, and for the conflict
//! checks: one lookup per hostname). Readers load the snapshots and never wait. Writers
//! are serialised by a lock that only writers take, which makes "check the hostnames are
//! free, write, commit, publish" atomic without stalling any reader behind a slow disk.
//! A commit that fails ends proxyd (status 74) before anything is published or answered:
//! the supervisor restarts it from what the disk holds.
//!
//! A store can be closed and opened again within one run of proxyd (a hand-over that
//! failed, see [`crate::tenure`]): [`StoreSetup`] keeps what it is opened with, and
//! opening it again reloads the sites from the tree (another instance may have changed
//! them meanwhile) and republishes the same routing table, which kept serving the proxy
//! while the tree was closed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use securely_core::durable::{self, CommitError, DurableTree};
use serde::{Deserialize, Serialize};

use crate::loops::OwnListeners;
use crate::routing::{Routes, RoutingTable};
use crate::sites::{InvalidField, Site, TargetHost, primary_hostname};

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
    /// The tree's files could not be synced when opening it.
    #[error("site store: {0}")]
    Sync(#[from] CommitError),
}

/// What a site store is opened with besides its tree, kept to open it again.
#[derive(Debug, Clone)]
pub struct StoreSetup {
    /// The local TLD, as the resolved settings hold it (lowercase, no trailing dot).
    pub tld: String,
    /// proxyd's listeners, which no site may target.
    pub own: OwnListeners,
    /// The routing table the proxy reads; every opening republishes it.
    pub routes: Arc<Routes>,
    /// The tree's directory (whose files every commit syncs).
    pub tree: PathBuf,
}

impl StoreSetup {
    /// Opens the site store on `db`, opened from [`StoreSetup::tree`] (see
    /// [`SiteStore::open`]).
    pub fn open(&self, db: sled::Db) -> Result<SiteStore, StoreError> {
        let durable = DurableTree::open(db, &self.tree)?;
        SiteStore::open(durable, &self.tld, self.own.clone(), self.routes.clone())
    }
}

/// The sites by name.
type Sites = BTreeMap<String, Site>;

/// The sled-backed set of sites.
pub struct SiteStore {
    tree: sled::Tree,
    tld: String,
    own: OwnListeners,
    /// Taken by writers only, for the whole check-write-commit-publish step; it holds
    /// what commits.
    writer: Mutex<DurableTree>,
    /// The sites as of the last completed change.
    sites: ArcSwap<Sites>,
    routes: Arc<Routes>,
}

impl SiteStore {
    /// Loads the sites from proxyd's tree and publishes their routing table. `tld` is
    /// the local TLD as the resolved settings hold it (lowercase, no trailing dot); `own`
    /// are proxyd's listeners, which no site may target. Records that no longer pass the
    /// checks (say, after the TLD changed) are skipped with a warning, never fatal.
    pub fn open(
        durable: DurableTree,
        tld: &str,
        own: OwnListeners,
        routes: Arc<Routes>,
    ) -> Result<Self, StoreError> {
        let tree = durable.db().open_tree(SITES_TREE)?;
        let tld = tld.to_string();
        let mut sites = Sites::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        for record in tree.iter() {
            let (key, value) = record?;
            match decode(&key, &value, &tld) {
                Ok(site) => {
                    match first_conflict(&site, &tld, |h| owners.get(h).map(String::as_str)) {
                        None => {
                            for hostname in site.serves(&tld) {
                                owners.insert(hostname, site.name.clone());
                            }
                            sites.insert(site.name.clone(), site);
                        }
                        Some(taken) => {
                            tracing::warn!(site = %site.name, "stored site skipped: {taken}")
                        }
                    }
                }
                Err(problem) => tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    "stored site skipped: {problem}"
                ),
            }
        }
        let store = Self {
            tree,
            tld,
            own,
            writer: Mutex::new(durable),
            sites: ArcSwap::from_pointee(Sites::new()),
            routes,
        };
        store.publish(sites);
        Ok(store)
    }

    /// The local TLD every site name lives under.
    pub fn tld(&self) -> &str {
        &self.tld
    }

    /// Creates or replaces the site `name`.
    pub fn link(&self, name: &str, target: &str, hostnames: &[String]) -> Result<Site, StoreError> {
        let site = Site::new(name, target, hostnames, &self.tld)?;
        self.refuse_own_listener(&site)?;
        let record = StoredSite {
            target: site.target.to_string(),
            hostnames: site.hostnames.clone(),
        };
        let value = bincode::serde::encode_to_vec(&record, bincode::config::standard())?;

        let mut writer = self.write_lock();
        let table = self.routes.snapshot();
        if let Some(taken) = first_conflict(&site, &self.tld, |hostname| {
            table.route(hostname).map(|route| route.site.as_str())
        }) {
            return Err(taken);
        }
        self.tree.insert(site.name.as_bytes(), value)?;
        commit(&mut writer);
        let mut sites = Sites::clone(&self.sites.load());
        sites.insert(site.name.clone(), site.clone());
        self.publish(sites);
        Ok(site)
    }

    /// Removes the site `name`.
    pub fn unlink(&self, name: &str) -> Result<Site, StoreError> {
        let name = crate::sites::parse_name(name)?;
        let mut writer = self.write_lock();
        let mut sites = Sites::clone(&self.sites.load());
        let Some(removed) = sites.remove(&name) else {
            return Err(StoreError::NotFound(name));
        };
        self.tree.remove(name.as_bytes())?;
        commit(&mut writer);
        self.publish(sites);
        Ok(removed)
    }

    /// Every site, by name, as of the last completed change.
    pub fn list(&self) -> Vec<Site> {
        self.sites.load().values().cloned().collect()
    }

    /// How many sites there are.
    pub fn len(&self) -> usize {
        self.sites.load().len()
    }

    /// Flushes and closes the database; the tree's lock is released once this returns
    /// (give or take sled's IO threads finishing, see the build notes).
    pub fn close(self) -> Result<(), sled::Error> {
        let durable = self.writer.into_inner().unwrap_or_else(|e| e.into_inner());
        durable.db().flush()?;
        drop(self.tree);
        drop(durable);
        Ok(())
    }

    /// Flushes without closing (when other handles may still be alive).
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.write_lock().db().flush().map(drop)
    }

    /// Refuses an IP target that is one of proxyd's own listeners: every request would
    /// come straight back. (A hostname target that resolves to proxyd is caught when a
    /// request arrives, see [`crate::loops`].)
    fn refuse_own_listener(&self, site: &Site) -> Result<(), InvalidField> {
        let TargetHost::Ip(ip) = site.target.host else {
            return Ok(());
        };
        match self.own.reached_by(SocketAddr::new(ip, site.target.port)) {
            None => Ok(()),
            Some(listener) => Err(InvalidField::new(
                "target",
                format!(
                    "{} is proxyd's own listener ({listener}), so every request would come \
                     back to proxyd; link the app's own address",
                    site.target
                ),
            )),
        }
    }

    /// Makes `sites` the current set: routing table first, so the proxy never lags the
    /// listing.
    fn publish(&self, sites: Sites) {
        self.routes
            .publish(RoutingTable::build(sites.values(), &self.tld));
        self.sites.store(Arc::new(sites));
    }

    fn write_lock(&self) -> MutexGuard<'_, DurableTree> {
        // The lock guards no data of its own; a writer that panicked left nothing torn.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Commits a change (on the writer's lock), or ends proxyd if it cannot: see the module
/// doc.
fn commit(writer: &mut DurableTree) {
    if let Err(error) = writer.commit() {
        durable::exit_for_restart("committing a site change", &error);
    }
}

/// The first hostname of `site` that another site already serves, `owner` naming the
/// site serving a hostname, if any. A site may keep its own hostnames when it is
/// replaced.
fn first_conflict<'a>(
    site: &Site,
    tld: &str,
    owner: impl Fn(&str) -> Option<&'a str>,
) -> Option<StoreError> {
    let primary = primary_hostname(&site.name, tld);
    let wanted = std::iter::once(("name", primary.as_str()))
        .chain(site.hostnames.iter().map(|h| ("hostnames", h.as_str())));
    for (field, hostname) in wanted {
        if let Some(holder) = owner(hostname)
            && holder != site.name
        {
            return Some(StoreError::Taken {
                field,
                hostname: hostname.to_string(),
                site: holder.to_string(),
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
    use crate::sites::MAX_HOSTNAMES;

    const OWN_LISTENER: &str = "127.0.0.1:8080";

    fn setup(dir: &std::path::Path, own: OwnListeners) -> StoreSetup {
        StoreSetup {
            tld: "test".into(),
            own,
            routes: Arc::new(Routes::default()),
            tree: dir.to_path_buf(),
        }
    }

    fn store(dir: &std::path::Path) -> (SiteStore, Arc<Routes>) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let own = OwnListeners::new(vec![OWN_LISTENER.parse().unwrap()]);
        let setup = setup(dir, own);
        (setup.open(db).unwrap(), setup.routes)
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
    fn reopening_republishes_what_the_tree_holds_now() {
        let dir = tempfile::tempdir().unwrap();
        let setup = setup(dir.path(), OwnListeners::default());
        let open = || {
            setup
                .open(sled::Config::new().path(dir.path()).open().unwrap())
                .unwrap()
        };
        let first = open();
        first.link("old", "127.0.0.1:1", &[]).unwrap();
        first.close().unwrap();
        // The tree is closed; the routing table still serves.
        let routes = &setup.routes;
        assert_eq!(routes.snapshot().route("old.test").unwrap().site, "old");

        // Another instance changes the tree meanwhile.
        let (other, _) = store(dir.path());
        other.unlink("old").unwrap();
        other.link("new", "127.0.0.1:2", &[]).unwrap();
        other.close().unwrap();
        assert!(routes.snapshot().route("new.test").is_none());

        let again = open();
        assert!(routes.snapshot().route("old.test").is_none());
        assert_eq!(routes.snapshot().route("new.test").unwrap().site, "new");
        let names: Vec<_> = again.list().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["new"]);
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

    #[test]
    fn a_site_may_not_target_proxyd_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (store, routes) = store(dir.path());
        for target in [OWN_LISTENER, "[::ffff:127.0.0.1]:8080", "0.0.0.0:8080"] {
            let err = store.link("loop", target, &[]).unwrap_err();
            assert!(
                matches!(&err, StoreError::Invalid(f) if f.field == "target"),
                "{target}: {err}"
            );
            assert!(err.to_string().contains("own listener"), "{err}");
        }
        assert!(routes.snapshot().is_empty());
        store.link("next-door", "127.0.0.1:8081", &[]).unwrap();
        // A hostname is not resolved here; the request-time check catches it.
        store.link("by-name", "localhost:8080", &[]).unwrap();
    }

    #[test]
    fn readers_do_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(dir.path());
        store.link("a", "127.0.0.1:1", &[]).unwrap();
        let store = Arc::new(store);
        // A writer in the middle of a slow flush holds the writer lock.
        let writing = store.write_lock();
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || (store.len(), store.list().len()))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !reader.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "a reader waited for the writer"
            );
            std::thread::yield_now();
        }
        assert_eq!(reader.join().unwrap(), (1, 1));
        drop(writing);
    }

    #[test]
    fn many_hostnames_are_checked_against_the_routing_table() {
        let dir = tempfile::tempdir().unwrap();
        let (store, routes) = store(dir.path());
        let first: Vec<String> = (0..MAX_HOSTNAMES)
            .map(|i| format!("a{i}.example"))
            .collect();
        store.link("a", "127.0.0.1:1", &first).unwrap();
        let mut second: Vec<String> = (0..MAX_HOSTNAMES - 1)
            .map(|i| format!("b{i}.example"))
            .collect();
        second.push(format!("a{}.example", MAX_HOSTNAMES - 1));
        let err = store.link("b", "127.0.0.1:2", &second).unwrap_err();
        assert!(
            matches!(&err, StoreError::Taken { hostname, site, .. }
                if *hostname == format!("a{}.example", MAX_HOSTNAMES - 1) && site == "a"),
            "{err}"
        );
        second.pop();
        store.link("b", "127.0.0.1:2", &second).unwrap();
        assert_eq!(routes.snapshot().len(), 2 * MAX_HOSTNAMES + 1);
    }
}
