//! proxyd's control thread, with its own tokio runtime (pingora owns the others): the
//! lifecycle driver ([`securely_core::lifecycle`]) over proxyd's tenant
//! ([`crate::tenant`]: the site store and `ProxyAdmin`) and data plane
//! ([`crate::plane`]: the proxy). It is the only party that decides when proxyd stops:
//! pingora's `Server::run` waits on [`PingoraShutdownWatch`](crate::drain) instead of Unix
//! signals, which the driver turns into shutdown requests.
//!
//! Whatever ends the run, the store is closed last: after the runtime is gone (so no task,
//! say a gRPC connection cut by a fast stop, still holds it) and after site writes in
//! progress have finished, should the driver's own close have been cut short.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use securely_core::daemon::Daemon;
use securely_core::lifecycle::{self, RunError};

use crate::plane::ProxyPlane;
use crate::store::SiteStore;
use crate::tenant::SiteTenant;

/// Why the control thread failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The runtime could not be built.
    #[error("cannot start the control runtime: {0}")]
    Runtime(io::Error),
    /// The daemon stopped with an error.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The sled tree could not be flushed at the exit.
    #[error("cannot flush the site store: {0}")]
    Store(#[from] sled::Error),
}

/// Starts the control thread.
pub fn spawn(
    mut daemon: Daemon,
    mut tenant: SiteTenant,
    mut plane: ProxyPlane,
) -> io::Result<JoinHandle<Result<(), ControlError>>> {
    std::thread::Builder::new()
        .name("proxyd-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ControlError::Runtime)?;
            let outcome = runtime.block_on(lifecycle::run(&mut daemon, &mut tenant, &mut plane));
            // Ends every task left (their futures are dropped) and waits for blocking
            // site writes (and an abandoned opening) to return.
            drop(runtime);
            let closed = tenant.slot.take().map_or(Ok(()), close_store);
            if let (Err(_), Err(e)) = (&outcome, &closed) {
                tracing::error!("{e}");
            }
            outcome.map_err(ControlError::from).and(closed)
        })
}

/// Flushes and closes the sled tree. Every other handle is gone by now (the runtime and
/// its tasks are); should one survive, the tree is still flushed.
fn close_store(store: Arc<SiteStore>) -> Result<(), ControlError> {
    match Arc::try_unwrap(store) {
        Ok(store) => store.close()?,
        Err(shared) => {
            tracing::warn!("site store still shared at exit; flushing without closing");
            shared.flush()?;
        }
    }
    Ok(())
}
