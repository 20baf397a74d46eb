//! proxyd's data plane, as the lifecycle driver ([`securely_core::lifecycle`]) sees it:
//! the HTTP proxy, which pingora runs on the main thread and which serves from the
//! routing table with or without the sled tree.
//!
//! - start: tells the main thread to run pingora (only once the first tenure has loaded
//!   the routing table); it answers once pingora reports it runs and the proxy answers a
//!   probe on every listener;
//! - failed: the proxy service could not start;
//! - stop: the proxy stops accepting (its listeners close); graceful, it waits until every
//!   client connection has ended, at most the grace period (a fast request cuts this
//!   short; see [`crate::drain`]); then pingora's main loop is released, which drops its
//!   runtimes at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use pingora::server::ExecutionPhase;
use securely_core::drain::InFlight;
use securely_core::shutdown::ShutdownKind;
use securely_core::tenure::{Answering, BoxError, DataPlane};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::connections::Connections;
use crate::drain::{self, CutOff, DrainOutcome, PingoraExit, PingoraRelease};
use crate::probe;
use crate::service::ServiceError;
use crate::tls::certs::Certs;

/// How long the proxy may take to answer its first request on each listener after
/// pingora reports it runs.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy does not serve.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The main thread, which runs pingora, is gone.
    #[error("pingora's thread is gone")]
    MainGone,
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
    /// The proxy service could not start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The https listeners have no CA to serve certificates from (no tree was opened).
    #[error("no local CA loaded for the https listeners")]
    NoCa,
}

/// The proxy, seen from the control thread.
pub struct ProxyPlane {
    /// Tells the main thread to run pingora.
    pub run_pingora: Option<SyncSender<()>>,
    /// pingora's execution phases, subscribed before `Server::run`.
    pub phases: Option<broadcast::Receiver<ExecutionPhase>>,
    /// The HTTP listeners' addresses.
    pub http: Vec<SocketAddr>,
    /// The https listeners' addresses.
    pub https: Vec<SocketAddr>,
    /// The certificates, whose CA the https probe trusts.
    pub certs: Arc<Certs>,
    /// Reports the proxy service failing to start.
    pub service_failure: oneshot::Receiver<ServiceError>,
    /// Flipped to stop the proxy accepting.
    pub stop_accepting: watch::Sender<bool>,
    /// The proxy's client connections, which the drain waits for.
    pub connections: Arc<Connections>,
    /// Requests in flight in the proxy.
    pub in_flight: Arc<InFlight>,
    /// Upgraded connections (WebSockets) in the proxy.
    pub tunnels: Arc<InFlight>,
    /// Ends pingora's main loop.
    pub pingora: PingoraRelease,
    /// The grace period, for the log.
    pub grace: Duration,
}

impl DataPlane for ProxyPlane {
    fn listeners(&self) -> Vec<String> {
        self.http
            .iter()
            .chain(&self.https)
            .map(|a| format!("tcp://{a}"))
            .collect()
    }

    fn start(&mut self) -> Result<Answering, BoxError> {
        let run = self.run_pingora.take().ok_or(PlaneError::MainGone)?;
        run.send(()).map_err(|_| PlaneError::MainGone)?;
        let phases = self.phases.take().ok_or(PlaneError::PingoraGone)?;
        Ok(Box::pin(answering(
            phases,
            self.http.clone(),
            self.https.clone(),
            self.certs.clone(),
        )))
    }

    async fn failed(&mut self) -> BoxError {
        match (&mut self.service_failure).await {
            Ok(e) => PlaneError::Service(e).into(),
            Err(_) => std::future::pending().await,
        }
    }

    async fn stop(
        &mut self,
        kind: ShutdownKind,
        deadline: Instant,
        fast: impl Future<Output = ()>,
    ) {
        tracing::info!(?kind, "no longer accepting");
        self.stop_accepting.send_replace(true);
        let exit = match kind {
            ShutdownKind::Graceful => {
                let outcome = drain::wait_for_idle(
                    &self.connections,
                    &self.in_flight,
                    &self.tunnels,
                    deadline,
                    fast,
                )
                .await;
                log_drain(self.grace, outcome);
                PingoraExit::Drained
            }
            ShutdownKind::Fast => PingoraExit::Fast,
        };
        tracing::info!("releasing pingora's main loop");
        self.pingora.release(exit);
    }
}

/// Waits for pingora to run, then proves the proxy answers on every listener (over TLS,
/// with a certificate its CA signed, on the https ones).
async fn answering(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    certs: Arc<Certs>,
) -> Result<(), BoxError> {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::Running) => break,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Err(PlaneError::PingoraGone.into()),
        }
    }
    for addr in http {
        probe::http(addr, READY_TIMEOUT)
            .await
            .map_err(|source| PlaneError::NotServing { addr, source })?;
    }
    if https.is_empty() {
        return Ok(());
    }
    let ca = certs.ca().ok_or(PlaneError::NoCa)?;
    for addr in https {
        probe::https(addr, &ca, READY_TIMEOUT)
            .await
            .map_err(|source| PlaneError::NotServing { addr, source })?;
    }
    Ok(())
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
        "{} connection(s) ({} silent since they connected, {} upgraded (WebSockets)), \
         {} request(s) in flight",
        cut.connections, cut.silent, cut.tunnels, cut.requests
    )
}
