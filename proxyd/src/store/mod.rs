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

mod record;

use record::{StoredSite, decode};

use crate::loops::OwnListeners;
use crate::routing::{Routes, RoutingTable};
use crate::sites::{InvalidField, Site, TargetHost, primary_hostname};
use crate::tls::ca::LocalCa;
use crate::tls::certs::Certs;
use crate::tls::vault::{Vault, VaultError};

/// The sled tree (inside proxyd's database) that holds one record per site.
const SITES_TREE: &str = "sites";

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
    /// The local CA could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] VaultError),
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
    /// The certificates the TLS listeners serve; every opening hands them the CA and
    /// the kept leaves, every closing saves the leaves minted since.
    pub certs: Arc<Certs>,
}

impl StoreSetup {
    /// Opens the site store on `db`, opened from [`StoreSetup::tree`] (see
    /// [`SiteStore::open`]).
    pub fn open(&self, db: sled::Db) -> Result<SiteStore, StoreError> {
        let mut durable = DurableTree::open(db, &self.tree)?;
        let vault = Vault::open(&mut durable, &self.tld, self.certs.clone())?;
        SiteStore::open(
            durable,
            vault,
            &self.tld,
            self.own.clone(),
            self.routes.clone(),
        )
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
    /// The local CA (and, beside it in the tree, the leaves).
    vault: Vault,
}

impl SiteStore {
    /// Loads the sites from proxyd's tree and publishes their routing table. `tld` is
    /// the local TLD as the resolved settings hold it (lowercase, no trailing dot); `own`
    /// are proxyd's listeners, which no site may target. Records that no longer pass the
    /// checks (say, after the TLD changed) are skipped with a warning, never fatal.
    pub fn open(
        durable: DurableTree,
        vault: Vault,
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
            vault,
        };
        store.publish(sites);
        Ok(store)
    }

    /// The local CA.
    pub fn ca(&self) -> &Arc<LocalCa> {
        self.vault.ca()
    }

    /// The certificates served.
    pub fn certs(&self) -> &Arc<Certs> {
        self.vault.certs()
    }

    /// The local TLD every site name lives under.
    pub fn tld(&self) -> &str {
        &self.tld
    }

    /// Creates or replaces the site `name`.
    pub fn link(&self, name: &str, target: &str, hostnames: &[String]) -> Result<Site, StoreError> {
        let mut site = Site::new(name, target, hostnames, &self.tld)?;
        self.refuse_own_listener(&site)?;

        let mut writer = self.write_lock();
        let table = self.routes.snapshot();
        if let Some(taken) = first_conflict(&site, &self.tld, |hostname| {
            table.route(hostname).map(|route| route.site.as_str())
        }) {
            return Err(taken);
        }
        // Replacing a site keeps whether it is served over https.
        site.secure = self.sites.load().get(&site.name).is_some_and(|s| s.secure);
        self.write(&mut writer, site)
    }

    /// Serves the site `name` over https (`secure`) or plain HTTP only.
    pub fn set_secure(&self, name: &str, secure: bool) -> Result<Site, StoreError> {
        let name = crate::sites::parse_name(name)?;
        let mut writer = self.write_lock();
        let Some(mut site) = self.sites.load().get(&name).cloned() else {
            return Err(StoreError::NotFound(name));
        };
        if site.secure == secure {
            return Ok(site);
        }
        site.secure = secure;
        self.write(&mut writer, site)
    }

    /// Stores `site` (on the writer's lock), commits and publishes it.
    fn write(&self, writer: &mut DurableTree, site: Site) -> Result<Site, StoreError> {
        let value = StoredSite::of(&site).encode()?;
        self.tree.insert(site.name.as_bytes(), value)?;
        commit(writer);
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
        if let Err(e) = self.vault.save_leaves() {
            tracing::warn!("the certificates issued are not kept: {e}");
        }
        durable.db().flush()?;
        drop(self.tree);
        drop(self.vault);
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

#[cfg(test)]
mod tests;
