//! proxyd's control plane, on its own thread and tokio runtime (pingora owns the others):
//! SIGTERM/SIGINT, the gRPC server, readiness, and the shutdown sequence.
//!
//! This is the only party that decides when proxyd stops. pingora's `Server::run` waits
//! on [`PingoraShutdownWatch`](crate::drain::PingoraShutdownWatch) instead of Unix
//! signals, and the signals are turned into a
//! [`Shutdown`](securely_core::shutdown::Shutdown) request here. Whatever the
//! source (signal, `Drain` RPC, supervisor gone), the sequence is:
//!
//! 1. `STOPPING=1`, and the proxy stops accepting (its listeners close);
//! 2. graceful: wait until no request is in flight, at most `grace_period_seconds`
//!    (a fast request cuts this short); fast: skip the wait;
//! 3. release pingora's main loop, which drops its runtimes at once;
//! 4. stop the gRPC server, letting calls in progress finish (bounded);
//! 5. flush and close the sled tree.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::server::ExecutionPhase;
use securely_core::daemon::Daemon;
use securely_core::rpc;
use securely_core::shutdown::ShutdownKind;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinError;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::drain::{self, DrainOutcome, InFlight, PingoraExit, PingoraRelease};
use crate::listeners;
use crate::store::SiteStore;

/// How long the proxy may take to answer its first request on each listener after
/// pingora reports it runs.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long gRPC calls in progress get to finish once the proxy has stopped.
const GRPC_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The runtime could not be built.
    #[error("cannot start the control runtime: {0}")]
    Runtime(io::Error),
    /// SIGTERM/SIGINT could not be watched.
    #[error("cannot watch SIGTERM/SIGINT: {0}")]
    Signals(io::Error),
    /// The gRPC server stopped by itself.
    #[error("gRPC server stopped: {0}")]
    Grpc(String),
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
}

/// Everything the control thread owns.
pub struct ControlPlane {
    /// The daemon (settings, readiness, shutdown switch, access rules).
    pub daemon: Daemon,
    /// The gRPC socket.
    pub grpc: UnixListener,
    /// The sites.
    pub store: SiteStore,
    /// Requests in flight in the proxy.
    pub in_flight: Arc<InFlight>,
    /// Flipped to stop the proxy accepting.
    pub stop_accepting: watch::Sender<bool>,
    /// Ends pingora's main loop.
    pub pingora: PingoraRelease,
    /// pingora's execution phases, subscribed before `Server::run`.
    pub phases: broadcast::Receiver<ExecutionPhase>,
    /// The HTTP listeners' addresses.
    pub http: Vec<SocketAddr>,
}

impl ControlPlane {
    /// Starts the control thread.
    pub fn spawn(self) -> io::Result<JoinHandle<Result<(), ControlError>>> {
        std::thread::Builder::new()
            .name("proxyd-control".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ControlError::Runtime)?
                    .block_on(self.run())
            })
    }

    async fn run(self) -> Result<(), ControlError> {
        let Self {
            daemon,
            grpc,
            store,
            in_flight,
            stop_accepting,
            pingora,
            phases,
            http,
        } = self;
        let daemon = Arc::new(daemon);
        let shutdown = daemon.shutdown.clone();
        shutdown.watch_signals().map_err(ControlError::Signals)?;
        let store = Arc::new(store);

        // Serve gRPC.
        let mut listener_urls: Vec<String> = http.iter().map(|a| format!("tcp://{a}")).collect();
        listener_urls.push(format!("unix://{}", daemon.socket_path().display()));
        let routes = Routes::new(daemon.control_service(listener_urls).into_server())
            .add_service(AdminService::new(store.clone(), daemon.access.clone()).into_server());
        let (grpc_stop, grpc_stopping) = watch::channel(false);
        let mut grpc_task = Some(tokio::spawn(rpc::serve(
            grpc,
            routes,
            until_true(grpc_stopping),
        )));

        // Report readiness once the proxy answers.
        let readiness = tokio::spawn(become_ready(daemon.clone(), phases, http, store.clone()));

        // Serve until asked to stop.
        let mut failure = None;
        let kind = tokio::select! {
            kind = shutdown.wait() => kind,
            ended = wait_some(&mut grpc_task) => {
                failure = Some(ControlError::Grpc(describe_grpc_end(ended)));
                ShutdownKind::Fast
            }
        };

        // Stop accepting, drain, release pingora; then stop gRPC and close the store.
        tracing::info!("{} shutdown: no longer accepting", describe_kind(kind));
        daemon.stopping();
        stop_accepting.send_replace(true);
        let exit = match kind {
            ShutdownKind::Graceful => {
                let grace = daemon.settings.grace_period();
                log_drain(
                    grace,
                    drain::wait_for_idle(&in_flight, grace, shutdown.wait_fast()).await,
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
        grpc_stop.send_replace(true);
        if let Some(task) = grpc_task {
            stop_grpc(task).await;
        }
        close_store(store)?;
        failure.map_or(Ok(()), Err)
    }
}

fn log_drain(grace: Duration, outcome: DrainOutcome) {
    match outcome {
        DrainOutcome::Idle => tracing::info!("every request finished"),
        DrainOutcome::GraceExpired { in_flight } => tracing::warn!(
            "grace period of {}s over; cutting off {in_flight} request(s)",
            grace.as_secs()
        ),
        DrainOutcome::Interrupted { in_flight } => {
            tracing::warn!("fast shutdown requested; cutting off {in_flight} request(s)")
        }
    }
}

/// Lets gRPC calls in progress finish, at most [`GRPC_STOP_TIMEOUT`] (the server was told
/// to stop already).
async fn stop_grpc(mut task: tokio::task::JoinHandle<Result<(), rpc::ServeError>>) {
    match tokio::time::timeout(GRPC_STOP_TIMEOUT, &mut task).await {
        Ok(Ok(Err(e))) => tracing::warn!("gRPC server: {e}"),
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("gRPC calls still running after {GRPC_STOP_TIMEOUT:?}; dropping them");
            task.abort();
            let _ = task.await;
        }
    }
}

/// Waits for pingora to run, proves the proxy answers on every listener, then reports
/// readiness (unless a shutdown began meanwhile: `READY=1` never follows `STOPPING=1`).
/// A proxy that never answers is fatal: a fast shutdown is requested.
async fn become_ready(
    daemon: Arc<Daemon>,
    mut phases: broadcast::Receiver<ExecutionPhase>,
    http: Vec<SocketAddr>,
    store: Arc<SiteStore>,
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
            let http: Vec<String> = http.iter().map(ToString::to_string).collect();
            let status = format!(
                "{} site(s); HTTP on {}; gRPC on {}",
                store.len(),
                http.join(", "),
                daemon.socket_path().display()
            );
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

/// Flushes and closes the sled tree. Every other handle is gone by now (the gRPC server
/// and the readiness task have ended); should one survive, the tree is still flushed.
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

/// Resolves once the watched value is true (or its sender is gone).
async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Awaits the task in `slot` and empties the slot; pends forever when it is empty.
async fn wait_some<T>(slot: &mut Option<tokio::task::JoinHandle<T>>) -> Result<T, JoinError> {
    match slot {
        Some(task) => {
            let ended = task.await;
            *slot = None;
            ended
        }
        None => std::future::pending().await,
    }
}

fn describe_grpc_end(ended: Result<Result<(), rpc::ServeError>, JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "ended without being asked to".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

fn describe_kind(kind: ShutdownKind) -> &'static str {
    match kind {
        ShutdownKind::Graceful => "graceful",
        ShutdownKind::Fast => "fast",
    }
}
