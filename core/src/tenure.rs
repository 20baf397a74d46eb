//! What a daemon gives the lifecycle driver ([`crate::lifecycle`]): how it holds its sled
//! tree ([`Tenant`]) and what it serves without the tree ([`DataPlane`]).
//!
//! A *tenure* is one stretch of holding the tree: from [`Tenant::open`] (after `ACQUIRE`,
//! or on `RESUME`) to [`Tenant::close`] (on `RELEASE`, or at the stop). During a tenure the
//! driver serves the tenant's gRPC services on the daemon's socket; between tenures there
//! is no gRPC server, and the data plane serves on from memory.

use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;
use tonic::service::Routes;

use crate::shutdown::ShutdownKind;

/// Any error a daemon reports to the driver (its source chain is kept).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a tree could not be closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// A fast stop cut the close short before the tree was closed (say, while a call
    /// still held the store). Not a failure: the daemon closes what is left once its
    /// runtime is gone, and no `RELEASED=1` is sent.
    #[error("cut short by a fast stop")]
    CutShort,
    /// The tree could not be flushed or closed.
    #[error(transparent)]
    Failed(BoxError),
}

/// A daemon's hold on its sled tree, which a hand-over moves from one instance to the next.
pub trait Tenant {
    /// One tenure: the opened tree and what serves from it (store, engine, ...).
    type Tenure;

    /// Opens the tree (retrying while a previous holder lets go of it) and loads what is
    /// served from it. Abandoned (dropped) when a shutdown request comes first, so run
    /// the blocking work on the blocking pool.
    fn open(&mut self) -> impl Future<Output = Result<Self::Tenure, BoxError>>;

    /// The gRPC services that serve from `tenure` (the driver adds `DaemonControl`,
    /// health and reflection).
    fn routes(&self, tenure: &Self::Tenure) -> Routes;

    /// The one-line status sent with `READY=1`.
    fn status(&self, tenure: &Self::Tenure) -> String;

    /// The tenure is about to end (a release or the stop), before gRPC stops: end what
    /// would hold calls open (queued's waiting Reserves).
    fn ending(&self, tenure: &Self::Tenure) {
        let _ = tenure;
    }

    /// Closes the tree once gRPC has stopped: flushed, every sled handle dropped, so that
    /// another process can open it. `cut_short` resolves on a fast stop.
    fn close(
        &mut self,
        tenure: Self::Tenure,
        cut_short: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<(), CloseError>>;
}

/// Resolves once a started data plane answers (see [`DataPlane::start`]).
pub type Answering = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;

/// What a daemon serves without its tree (proxyd's HTTP, dnsd's DNS): it goes on through
/// a hand-over. A daemon without one uses [`NoDataPlane`].
pub trait DataPlane {
    /// Its sockets as URLs (`tcp://ADDR`, `udp://ADDR`), for `DaemonControl.Status`.
    fn listeners(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts serving, once, after the first tenure opened (what it answers may come
    /// from the tree). The future resolves once it answers; `READY=1` waits for it.
    fn start(&mut self) -> Result<Answering, BoxError> {
        Ok(Box::pin(async { Ok(()) }))
    }

    /// Resolves if it fails by itself (a socket, a service); pends while it serves.
    fn failed(&mut self) -> impl Future<Output = BoxError> {
        std::future::pending()
    }

    /// Stops it. Graceful: stop taking new work (the next instance, or the socket's
    /// backlog, gets it), finish what was taken, until `deadline` or until `fast`
    /// resolves. Fast: at once. Also called when it never started.
    fn stop(
        &mut self,
        kind: ShutdownKind,
        deadline: Instant,
        fast: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        let _ = (kind, deadline, fast);
        async {}
    }
}

/// The data plane of a daemon that serves nothing without its tree (queued).
#[derive(Debug, Default)]
pub struct NoDataPlane;

impl DataPlane for NoDataPlane {}
