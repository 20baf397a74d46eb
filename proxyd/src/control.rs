//! proxyd's control plane, on its own thread and tokio runtime (pingora owns the others):
//! SIGTERM/SIGINT, the gRPC server, readiness, the supervisor's hand-over commands, and
//! the shutdown sequence.
//!
//! This is the only party that decides when proxyd stops. pingora's `Server::run` waits
//! on [`PingoraShutdownWatch`](crate::drain::PingoraShutdownWatch) instead of Unix
//! signals, and the signals are turned into a
//! [`Shutdown`](securely_core::shutdown::Shutdown) request here.
//!
//! While it serves, proxyd follows the supervisor's hand-over commands, which move its
//! sled tree to a new instance of proxyd and, should that one fail, back
//! ([`crate::handover`]). The proxy keeps serving HTTP from its routing table throughout:
//!
//! - `RELEASE`: stop the gRPC server (its calls in flight finish, bounded by the grace
//!   period), close the site store completely, `RELEASED=1`;
//! - `RESUME`: reopen the tree and reload the sites (republishing the routing table),
//!   serve gRPC again on the same socket, `READY=1`.
//!
//! A release or a resume that fails ends proxyd like a graceful shutdown, with an error.
//! Whatever the source (signal, `Drain` RPC, supervisor gone, failed hand-over step), and
//! whether proxyd holds its tree or has released it, the shutdown sequence is:
//!
//! 1. `STOPPING=1`, and the proxy stops accepting (its listeners close);
//! 2. graceful: wait until every client connection has ended, at most
//!    `grace_period_seconds` (a fast request cuts this short); fast: skip the wait. A
//!    connection accepted just before the stop is answered once its request arrives,
//!    a busy one closes after its current request, an idle kept-alive one is closed
//!    (see [`crate::drain`]);
//! 3. release pingora's main loop, which drops its runtimes at once;
//! 4. stop the gRPC server if it runs: graceful, its calls in flight finish (bounded by
//!    the same grace period); fast, cut at once;
//! 5. drop the control runtime, then flush and close the sled tree if proxyd holds it.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::server::ExecutionPhase;
use securely_core::daemon::Daemon;
use securely_core::drain::InFlight;
use securely_core::readiness::Command;
use securely_core::rpc::RpcServer;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinError;
use tokio::time::Instant;

use crate::connections::Connections;
use crate::drain::{self, CutOff, DrainOutcome, PingoraExit, PingoraRelease};
use crate::handover::HandOver;
use crate::listeners;
use crate::service::ServiceError;
use crate::store::{SiteStore, StoreSetup};
use crate::tenure::{StoreSlot, TenureError};

/// How long the proxy may take to answer its first request on each listener after
/// pingora reports it runs.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The runtime could not be built.
    #[error("cannot start the control runtime: {0}")]
    Runtime(io::Error),
    /// SIGTERM/SIGINT could not be watched.
    #[error("cannot watch SIGTERM/SIGINT: {0}")]
    Signals(io::Error),
    /// The gRPC socket could not be duplicated for a new gRPC server.
    #[error("cannot use the gRPC socket: {0}")]
    GrpcSocket(io::Error),
    /// The gRPC server stopped by itself.
    #[error("gRPC server stopped: {0}")]
    Grpc(String),
    /// The proxy service could not start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// pingora ended before it ran.
    #[error("pingora stopped before it started serving")]
    PingoraGone,
    /// The proxy does not answer on one of its listeners.
    #[error("the proxy does not answer on {addr}: {source}")]
    NotServing {
        /// The listener.
        addr: SocketAddr,
        /// What the probe saw.
        source: io::Error,
    },
    /// The readiness task failed.
    #[error("readiness task failed: {0}")]
    Readiness(JoinError),
    /// The sled tree could not be flushed.
    #[error("cannot flush the site store: {0}")]
    Store(#[from] sled::Error),
    /// The sled tree could not be released for a hand-over.
    #[error("cannot release the sled tree: {0}")]
    Release(TenureError),
    /// The sled tree could not be taken back after a failed hand-over.
    #[error("cannot resume: {0}")]
    Resume(TenureError),
}

impl ControlError {
    /// A hand-over step that a shutdown request cut short: not a failure.
    fn interrupted(&self) -> bool {
        matches!(
            self,
            ControlError::Release(TenureError::Interrupted)
                | ControlError::Resume(TenureError::Interrupted)
        )
    }
}

/// Everything the control thread owns besides the site store.
pub struct ControlPlane {
    /// The daemon (settings, readiness, shutdown switch, access rules, hand-over
    /// commands).
    pub daemon: Daemon,
    /// The gRPC socket.
    pub grpc: UnixListener,
    /// What the site store was opened with, to open it again after a release.
    pub store_setup: StoreSetup,
    /// Requests in flight in the proxy.
    pub in_flight: Arc<InFlight>,
    /// The proxy's client connections, which the drain waits for.
    pub connections: Arc<Connections>,
    /// Flipped to stop the proxy accepting.
    pub stop_accepting: watch::Sender<bool>,
    /// Ends pingora's main loop.
    pub pingora: PingoraRelease,
    /// pingora's execution phases, subscribed before `Server::run`.
    pub phases: broadcast::Receiver<ExecutionPhase>,
    /// Reports the proxy service failing to start.
    pub service_failure: oneshot::Receiver<ServiceError>,
    /// The HTTP listeners' addresses.
    pub http: Vec<SocketAddr>,
}

/// What ended the serving phase.
enum StopCause {
    /// A shutdown was requested (signal, `Drain`, supervisor gone, readiness failure).
    Requested(ShutdownKind),
    /// The proxy service could not start.
    ServiceFailed(ServiceError),
    /// The gRPC server ended by itself.
    GrpcEnded(String),
    /// A release or a resume failed.
    HandOverFailed(ControlError),
}

impl ControlPlane {
    /// Starts the control thread, which owns `store` and closes it last (unless it is
    /// released by then): after its runtime is gone, so no task (a gRPC connection cut by
    /// the stop, say) still holds it, and after site writes in progress have finished.
    pub fn spawn(self, store: SiteStore) -> io::Result<JoinHandle<Result<(), ControlError>>> {
        std::thread::Builder::new()
            .name("proxyd-control".into())
            .spawn(move || {
                let slot = Arc::new(StoreSlot::new(store));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ControlError::Runtime)?;
                let outcome = runtime.block_on(self.run(slot.clone()));
                // Ends every task left (their futures are dropped) and waits for blocking
                // site writes (and an abandoned reopening) to return.
                drop(runtime);
                let closed = slot.take().map_or(Ok(()), close_store);
                if let (Err(_), Err(e)) = (&outcome, &closed) {
                    tracing::error!("{e}");
                }
                outcome.and(closed)
            })
    }

    async fn run(self, slot: Arc<StoreSlot>) -> Result<(), ControlError> {
        let Self {
            daemon,
            grpc,
            store_setup,
            in_flight,
            connections,
            stop_accepting,
            pingora,
            phases,
            mut service_failure,
            http,
        } = self;
        let daemon = Arc::new(daemon);
        let shutdown = daemon.shutdown.clone();
        shutdown.watch_signals().map_err(ControlError::Signals)?;

        // Serve gRPC.
        let hand_over = HandOver {
            daemon: daemon.clone(),
            grpc,
            slot: slot.clone(),
            setup: store_setup,
            http: http.clone(),
        };
        let mut grpc = Some(hand_over.start_grpc()?);

        // Report readiness once the proxy answers.
        let readiness = tokio::spawn(become_ready(daemon.clone(), phases, http, slot));

        // Serve until asked to stop, releasing and resuming the tree as the supervisor
        // commands. A service failure is checked first: it is reported before its sockets
        // close, so the readiness probe failing on them comes second.
        let cause = loop {
            let command = tokio::select! {
                biased;
                failed = service_failed(&mut service_failure) => {
                    break StopCause::ServiceFailed(failed);
                }
                kind = shutdown.wait() => break StopCause::Requested(kind),
                reason = grpc_ended(&mut grpc) => {
                    grpc = None;
                    break StopCause::GrpcEnded(reason);
                }
                command = daemon.next_command() => command,
            };
            let step = match (command, grpc.take()) {
                (Command::Release, Some(server)) => hand_over.release(server).await.map(|()| None),
                (Command::Resume, None) => hand_over.resume().await.map(Some),
                (command, server) => {
                    let state = if server.is_some() { "held" } else { "released" };
                    tracing::warn!(?command, "ignored: the sled tree is already {state}");
                    Ok(server)
                }
            };
            match step {
                Ok(server) => grpc = server,
                Err(e) if e.interrupted() => tracing::info!("{e}"),
                Err(e) => break StopCause::HandOverFailed(e),
            }
        };
        let (kind, mut failure) = match cause {
            StopCause::Requested(kind) => (kind, None),
            StopCause::ServiceFailed(e) => {
                tracing::error!("{e}");
                (ShutdownKind::Fast, Some(e.into()))
            }
            StopCause::GrpcEnded(reason) => (ShutdownKind::Fast, Some(ControlError::Grpc(reason))),
            StopCause::HandOverFailed(e) => {
                tracing::error!("{e}; shutting down");
                shutdown.request(ShutdownKind::Graceful);
                (ShutdownKind::Graceful, Some(e))
            }
        };

        // Stop accepting, drain, release pingora; then stop gRPC.
        tracing::info!("{} shutdown: no longer accepting", describe_kind(kind));
        daemon.stopping();
        stop_accepting.send_replace(true);
        let grace = daemon.settings.grace_period();
        let deadline = Instant::now() + grace;
        let exit = match kind {
            ShutdownKind::Graceful => {
                log_drain(
                    grace,
                    drain::wait_for_idle(&connections, &in_flight, deadline, shutdown.wait_fast())
                        .await,
                );
                PingoraExit::Drained
            }
            ShutdownKind::Fast => PingoraExit::Fast,
        };
        tracing::info!("releasing pingora's main loop");
        pingora.release(exit);
        readiness.abort();
        match readiness.await {
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) if !e.is_cancelled() => {
                failure.get_or_insert(ControlError::Readiness(e));
            }
            Ok(Ok(())) | Err(_) => {}
        }
        if let Some(grpc) = grpc {
            stop_grpc(grpc, kind, &shutdown, deadline).await;
        }
        failure.map_or(Ok(()), Err)
    }
}

fn log_drain(grace: Duration, outcome: DrainOutcome) {
    match outcome {
        DrainOutcome::Idle => tracing::info!("every request finished, every connection closed"),
        DrainOutcome::GraceExpired(cut) => tracing::warn!(
            "grace period of {}s over; cutting off {}",
            grace.as_secs(),
            describe_cut(cut)
        ),
        DrainOutcome::Interrupted(cut) => {
            tracing::warn!("fast shutdown requested; cutting off {}", describe_cut(cut))
        }
    }
}

/// What a drain cut off, for the log.
fn describe_cut(cut: CutOff) -> String {
    format!(
        "{} connection(s) ({} silent since they connected), {} request(s) in flight",
        cut.connections, cut.silent, cut.requests
    )
}

/// Stops the gRPC server: graceful (its calls in flight finish, until the end of the grace
/// period) unless the stop is fast, or a fast shutdown has been requested meanwhile.
pub(crate) async fn stop_grpc(
    grpc: RpcServer,
    kind: ShutdownKind,
    shutdown: &Shutdown,
    deadline: Instant,
) {
    if kind == ShutdownKind::Fast || shutdown.requested() == Some(ShutdownKind::Fast) {
        grpc.abort();
        return;
    }
    grpc.stop_within(deadline, shutdown.wait_fast()).await;
}

/// Resolves with the service's failure; pends forever if it never reports one.
async fn service_failed(failure: &mut oneshot::Receiver<ServiceError>) -> ServiceError {
    match failure.await {
        Ok(e) => e,
        Err(_) => std::future::pending().await,
    }
}

/// Resolves if the gRPC server ends by itself; pends forever while there is none.
async fn grpc_ended(grpc: &mut Option<RpcServer>) -> String {
    match grpc {
        Some(grpc) => grpc.ended().await,
        None => std::future::pending().await,
    }
}

/// Waits for pingora to run, proves the proxy answers on every listener, then reports
/// readiness (unless a shutdown began meanwhile: `READY=1` never follows `STOPPING=1`;
/// nor `RELEASED=1`, should the tree be released already). A proxy that never answers is
/// fatal: a fast shutdown is requested.
async fn become_ready(
    daemon: Arc<Daemon>,
    mut phases: broadcast::Receiver<ExecutionPhase>,
    http: Vec<SocketAddr>,
    slot: Arc<StoreSlot>,
) -> Result<(), ControlError> {
    let result = async {
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::Running) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(ControlError::PingoraGone),
            }
        }
        for addr in &http {
            listeners::probe(*addr, READY_TIMEOUT)
                .await
                .map_err(|source| ControlError::NotServing {
                    addr: *addr,
                    source,
                })?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) if daemon.shutdown.requested().is_some() => Ok(()),
        Ok(()) => {
            let Some(sites) = slot.get().map(|store| store.len()) else {
                return Ok(());
            };
            let status = status_line(sites, &http, &daemon.socket_path());
            tracing::info!("ready: {status}");
            daemon.ready(status);
            Ok(())
        }
        Err(e) => {
            tracing::error!("{e}");
            daemon.shutdown.request(ShutdownKind::Fast);
            Err(e)
        }
    }
}

/// The status line sent with `READY=1`.
pub(crate) fn status_line(sites: usize, http: &[SocketAddr], grpc: &Path) -> String {
    let http: Vec<String> = http.iter().map(ToString::to_string).collect();
    format!(
        "{sites} site(s); HTTP on {}; gRPC on {}",
        http.join(", "),
        grpc.display()
    )
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

fn describe_kind(kind: ShutdownKind) -> &'static str {
    match kind {
        ShutdownKind::Graceful => "graceful",
        ShutdownKind::Fast => "fast",
    }
}
