//! The DNS data plane ([`DnsPlane`], dnsd's part in the lifecycle driver): one serving
//! loop per socket ([`udp`], [`tcp`]), all answering through one [`DnsHandler`], and
//! their stop.
//!
//! A graceful stop ([`DnsServer::drain`]) is lossless for everything dnsd has taken:
//! 1. every loop stops taking new work at once: no more datagrams read, no more
//!    connections accepted. From then on the instance that took over (it reads the
//!    same sockets), or the socket's buffer and backlog, has them;
//! 2. the work already taken finishes: forwarded UDP questions get their answer; every
//!    question read on a TCP connection is answered, then the connection closes cleanly
//!    at a message boundary (see [`tcp`]);
//! 3. bounded by the grace period, and cut short by a fast stop: whatever is left is
//!    dropped with the server.
//!
//! Hickory's own `Server` is not used for this: told to stop, it aborts the requests in
//! progress and drops replies still queued, and it cannot stop reading without stopping.

mod stop;
mod tcp;
mod udp;

use std::future::Future;
use std::io;
use std::sync::Arc;

use securely_core::drain::InFlight;
use securely_core::shutdown::ShutdownKind;
use securely_core::tenure::{Answering, BoxError, DataPlane};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::stop::StopSignal;
use crate::handler::DnsHandler;
use crate::listeners::{DnsSockets, ListenError};

/// dnsd's data plane: the DNS sockets and their handler until the driver starts it, then
/// the running [`DnsServer`].
pub struct DnsPlane {
    listeners: Vec<String>,
    prepared: Option<(DnsSockets, DnsHandler)>,
    running: Option<DnsServer>,
}

impl DnsPlane {
    /// A data plane that will serve `sockets` with `handler`.
    pub fn new(sockets: DnsSockets, handler: DnsHandler) -> Self {
        Self {
            listeners: sockets.describe(),
            prepared: Some((sockets, handler)),
            running: None,
        }
    }
}

impl DataPlane for DnsPlane {
    fn listeners(&self) -> Vec<String> {
        self.listeners.clone()
    }

    fn start(&mut self) -> Result<Answering, BoxError> {
        if let Some((sockets, handler)) = self.prepared.take() {
            self.running = Some(DnsServer::start(sockets, handler)?);
        }
        Ok(Box::pin(async { Ok(()) }))
    }

    async fn failed(&mut self) -> BoxError {
        match self.running.as_mut() {
            Some(server) => format!("DNS server stopped: {}", server.failed().await).into(),
            None => std::future::pending().await,
        }
    }

    async fn stop(
        &mut self,
        kind: ShutdownKind,
        deadline: Instant,
        fast: impl Future<Output = ()>,
    ) {
        let Some(server) = self.running.take() else {
            return;
        };
        match kind {
            ShutdownKind::Graceful => server.drain(deadline, fast).await,
            ShutdownKind::Fast => {
                tracing::info!("stopping DNS now");
                drop(server);
            }
        }
    }
}

/// The DNS sockets being served. Dropping it stops everything at once: the loops are
/// aborted, and with them the tasks they own (forwarded questions, TCP connections).
pub struct DnsServer {
    /// One serving loop per socket; each ends once it has stopped and finished its work.
    loops: JoinSet<io::Result<()>>,
    stop: watch::Sender<bool>,
    /// Forwarded UDP questions and open TCP connections.
    in_flight: Arc<InFlight>,
}

impl DnsServer {
    /// Serves every socket with `handler`. Must run inside the tokio runtime.
    pub fn start(sockets: DnsSockets, handler: DnsHandler) -> Result<Self, ListenError> {
        let (udp, tcp) = sockets.into_tokio()?;
        let handler = Arc::new(handler);
        let (stop, signal) = StopSignal::new();
        let in_flight = InFlight::new();
        let mut loops = JoinSet::new();
        for socket in udp {
            loops.spawn(udp::serve(
                socket,
                handler.clone(),
                signal.clone(),
                in_flight.clone(),
            ));
        }
        for listener in tcp {
            loops.spawn(tcp::serve(
                listener,
                handler.clone(),
                signal.clone(),
                in_flight.clone(),
            ));
        }
        Ok(Self {
            loops,
            stop,
            in_flight,
        })
    }

    /// Resolves if a serving loop ends by itself (a socket failed): why. Pends while
    /// every loop serves.
    pub async fn failed(&mut self) -> String {
        match self.loops.join_next().await {
            None => "no socket left".into(),
            Some(Ok(Ok(()))) => "a socket stopped serving".into(),
            Some(Ok(Err(error))) => error.to_string(),
            Some(Err(error)) => format!("a serving loop failed: {error}"),
        }
    }

    /// Stops taking new work, then finishes the work taken, until `deadline` or until
    /// `fast` resolves; whatever is left then is dropped.
    pub async fn drain(mut self, deadline: Instant, fast: impl Future<Output = ()>) {
        self.stop.send_replace(true);
        tracing::info!(
            in_flight = self.in_flight.count(),
            "draining DNS: no longer receiving; finishing the questions taken"
        );
        let (loops, in_flight) = (&mut self.loops, &self.in_flight);
        let finished = async {
            while let Some(ended) = loops.join_next().await {
                match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "a DNS socket failed while draining"),
                    Err(error) => {
                        tracing::warn!(%error, "a DNS serving loop failed while draining")
                    }
                }
            }
        };
        tokio::select! {
            () = finished => tracing::info!("DNS drained"),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(in_flight = in_flight.count(), "grace period over; dropping the DNS work left");
            }
            () = fast => tracing::info!("fast stop requested while draining"),
        }
    }
}
