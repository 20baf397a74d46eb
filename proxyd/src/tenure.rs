//! proxyd's hold on its sled tree, which a hand-over moves to the next instance of proxyd
//! (see [`securely_core::readiness`]); [`crate::tenant`] drives it for the lifecycle
//! driver.
//!
//! The site store sits in a [`StoreSlot`] that the admin service reads on every call, so
//! no gRPC connection keeps a handle of its own. [`release`] empties the slot, waits for
//! the calls still holding the store to let go of it, then flushes and closes it: every
//! sled handle is gone, and with them sled's lock on the tree. The routing table the
//! store published keeps serving the proxy meanwhile. [`reopen`] opens the tree again and
//! reloads the sites, which republishes the same routing table.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use securely_core::daemon::StartError;
use tokio::task::JoinError;
use tokio::time::Instant;

use crate::store::{SiteStore, StoreError, StoreSetup};

/// How long a release waits, once gRPC has stopped, for the calls it cut short to let go
/// of the store (a site write finishing its flush).
const LAST_HANDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a release checks whether the store is still shared.
const LAST_HANDLE_POLL: Duration = Duration::from_millis(5);

/// The site store while proxyd holds its tree; empty while the tree is released.
#[derive(Default)]
pub struct StoreSlot {
    store: ArcSwapOption<SiteStore>,
}

impl StoreSlot {
    /// A slot holding `store`.
    #[cfg(test)]
    pub fn new(store: SiteStore) -> Self {
        Self {
            store: ArcSwapOption::from_pointee(store),
        }
    }

    /// The store, unless the tree is released. Hold it only for the call at hand.
    pub fn get(&self) -> Option<Arc<SiteStore>> {
        self.store.load_full()
    }

    /// Empties the slot.
    pub fn take(&self) -> Option<Arc<SiteStore>> {
        self.store.swap(None)
    }

    fn put(&self, store: Arc<SiteStore>) {
        self.store.store(Some(store));
    }
}

/// Why the tree could not be released or taken back.
#[derive(Debug, thiserror::Error)]
pub enum TenureError {
    /// The store could not be flushed (its handles are dropped all the same).
    #[error("cannot flush the site store: {0}")]
    Flush(sled::Error),
    /// Some call still held the store when the wait ran out; the store is back in its
    /// slot.
    #[error("the site store is still in use {}s after gRPC stopped", .0.as_secs())]
    StillInUse(Duration),
    /// A shutdown request cut the step short (a release only by a fast one); a store
    /// taken from its slot is back in it.
    #[error("cut short by a shutdown request")]
    Interrupted,
    /// The tree could not be opened.
    #[error(transparent)]
    Open(StartError),
    /// The sites could not be loaded.
    #[error("cannot load the sites: {0}")]
    Load(StoreError),
    /// The blocking task that closes or opens the tree failed.
    #[error("site store task failed: {0}")]
    Task(JoinError),
}

/// Releases the tree: empties `slot`, waits for the last other holder of the store to let
/// go (at most [`LAST_HANDLE_TIMEOUT`], or until `cut_short` resolves), then flushes and
/// closes the store off the async workers. An empty slot has nothing to release.
pub async fn release(
    slot: &StoreSlot,
    cut_short: impl Future<Output = ()>,
) -> Result<(), TenureError> {
    let Some(mut store) = slot.take() else {
        return Ok(());
    };
    let give_up = Instant::now() + LAST_HANDLE_TIMEOUT;
    tokio::pin!(cut_short);
    let store = loop {
        match Arc::try_unwrap(store) {
            Ok(store) => break store,
            Err(shared) => store = shared,
        }
        if Instant::now() >= give_up {
            slot.put(store);
            return Err(TenureError::StillInUse(LAST_HANDLE_TIMEOUT));
        }
        tokio::select! {
            () = tokio::time::sleep(LAST_HANDLE_POLL) => {}
            () = &mut cut_short => {
                slot.put(store);
                return Err(TenureError::Interrupted);
            }
        }
    };
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(TenureError::Task)?
        .map_err(TenureError::Flush)
}

/// Takes the tree back after a release: opens it with `open_tree` (which may wait for
/// another process to let go of it), reloads the sites and republishes their routing
/// table, off the async workers, then fills `slot`. Returns how many sites there are.
pub async fn reopen(
    slot: &StoreSlot,
    setup: StoreSetup,
    open_tree: impl FnOnce() -> Result<sled::Db, StartError> + Send + 'static,
) -> Result<usize, TenureError> {
    let store = tokio::task::spawn_blocking(move || {
        let db = open_tree().map_err(TenureError::Open)?;
        setup.open(db).map_err(TenureError::Load)
    })
    .await
    .map_err(TenureError::Task)??;
    let sites = store.len();
    slot.put(Arc::new(store));
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loops::OwnListeners;
    use crate::routing::Routes;

    fn setup(tree: &std::path::Path) -> StoreSetup {
        let routes = Arc::new(Routes::default());
        StoreSetup {
            tld: "test".into(),
            own: OwnListeners::default(),
            routes: routes.clone(),
            tree: tree.to_path_buf(),
            certs: crate::tls::certs::Certs::new(routes),
        }
    }

    fn open(path: &std::path::Path) -> Result<sled::Db, StartError> {
        Ok(sled::Config::new().path(path).open().expect("a sled tree"))
    }

    #[tokio::test]
    async fn a_release_waits_for_the_last_holder_and_a_reopen_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let setup = setup(dir.path());
        let slot = StoreSlot::new(setup.open(open(dir.path()).unwrap()).unwrap());
        slot.get().unwrap().link("a", "127.0.0.1:1", &[]).unwrap();

        // A call still holds the store for a moment after gRPC stopped.
        let holder = slot.get().unwrap();
        let call = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(holder);
        });
        release(&slot, std::future::pending()).await.unwrap();
        assert!(call.is_finished());
        assert!(slot.get().is_none());
        // Released, the routing table still serves.
        assert_eq!(setup.routes.snapshot().route("a.test").unwrap().site, "a");

        // Another instance changes the tree meanwhile.
        let other = StoreSetup {
            routes: Arc::new(Routes::default()),
            ..setup.clone()
        }
        .open(open(dir.path()).unwrap())
        .unwrap();
        other.link("b", "127.0.0.1:2", &[]).unwrap();
        other.close().unwrap();

        let path = dir.path().to_path_buf();
        let sites = reopen(&slot, setup.clone(), move || open(&path))
            .await
            .unwrap();
        assert_eq!(sites, 2);
        assert_eq!(slot.get().unwrap().len(), 2);
        assert_eq!(setup.routes.snapshot().route("b.test").unwrap().site, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_held_too_long_is_not_released() {
        let dir = tempfile::tempdir().unwrap();
        let slot = StoreSlot::new(setup(dir.path()).open(open(dir.path()).unwrap()).unwrap());
        let _stuck = slot.get().unwrap();
        let err = release(&slot, std::future::pending()).await.unwrap_err();
        assert!(matches!(err, TenureError::StillInUse(_)), "{err}");
        assert!(slot.get().is_some(), "the store goes back to its slot");
    }

    #[tokio::test]
    async fn a_fast_shutdown_cuts_a_release_short() {
        let dir = tempfile::tempdir().unwrap();
        let slot = StoreSlot::new(setup(dir.path()).open(open(dir.path()).unwrap()).unwrap());
        let _stuck = slot.get().unwrap();
        let err = release(&slot, async {}).await.unwrap_err();
        assert!(matches!(err, TenureError::Interrupted), "{err}");
        assert!(slot.get().is_some(), "the store goes back to its slot");
        // Nothing held, nothing to release.
        slot.take();
        release(&slot, std::future::pending()).await.unwrap();
    }

    #[tokio::test]
    async fn a_tree_that_cannot_be_opened_is_reported() {
        let slot = StoreSlot::default();
        let err = reopen(&slot, setup(std::path::Path::new("/nonexistent")), || {
            Err(StartError::Usage("no tree here".into()))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, TenureError::Open(_)), "{err}");
        assert!(slot.get().is_none());
    }
}
