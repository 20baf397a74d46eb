//! Draining by work, not by timer.
//!
//! pingora's own graceful path broadcasts shutdown, then sleeps the whole
//! `grace_period_seconds` whatever is in flight, then drops its runtimes. proxyd instead:
//!
//! 1. stops accepting by flipping its own stop switch, which the proxy service watches
//!    instead of pingora's (see [`crate::service`]): the accept loops end and close the
//!    listening sockets; every response from then on closes its connection, so a
//!    connection busy at the stop ends after its current response, however slow;
//! 2. waits until every client connection has ended ([`Connections::drained`]), bounded
//!    by the grace period and cut short by a fast stop. Connections, not requests: one
//!    accepted just before the stop may not have sent its request yet. pingora's service
//!    returns first, after its cleanup, which waits until every new connection has sent
//!    its first bytes and no request is in flight, gives kept-alive connections
//!    `KEEPALIVE_CLOSE_WINDOW` to bring one more request, then drops those still idle
//!    (see [`crate::connections`]);
//! 3. only then releases pingora's main loop ([`PingoraRelease`]), whose own grace period
//!    is zero (see [`crate::conf`]), so its runtimes are dropped at once.
//!
//! Requests in flight ([`InFlight`], counted from the moment a request header is read
//! until its context is dropped or it is upgraded) and upgraded connections (WebSockets,
//! see [`crate::upgrade`]) are reported with the connections a drain cuts off. An
//! upgraded connection is waited for like any other: it stays open, passing messages
//! both ways, until one side closes it or the grace period ends; then it is closed with
//! the process's other sockets (no WebSocket close frame: proxyd does not parse the
//! upgraded bytes, and neither do nginx or HAProxy when they cut one).

use std::future::Future;

use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use securely_core::drain::InFlight;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connections::Connections;

/// What a drain cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff {
    /// Client connections still open.
    pub connections: usize,
    /// Of those, the ones whose client has sent nothing yet.
    pub silent: usize,
    /// Requests still in flight on them.
    pub requests: usize,
    /// Of the connections, the upgraded ones (WebSockets).
    pub tunnels: usize,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection ended, and so every request finished.
    Idle,
    /// The grace period ran out with connections still open.
    GraceExpired(CutOff),
    /// A fast shutdown cut the drain short.
    Interrupted(CutOff),
}

/// Waits until pingora's service has returned and every client connection has ended, at
/// most until `deadline` (the end of the grace period), or until `interrupt` resolves.
pub async fn wait_for_idle(
    connections: &Connections,
    requests: &InFlight,
    tunnels: &InFlight,
    deadline: Instant,
    interrupt: impl Future<Output = ()>,
) -> DrainOutcome {
    let cut_off = || CutOff {
        connections: connections.open(),
        silent: connections.awaiting_first_bytes(),
        requests: requests.count(),
        tunnels: tunnels.count(),
    };
    tokio::select! {
        () = connections.drained() => DrainOutcome::Idle,
        () = tokio::time::sleep_until(deadline) => DrainOutcome::GraceExpired(cut_off()),
        () = interrupt => DrainOutcome::Interrupted(cut_off()),
    }
}

/// How pingora's main loop should end once proxyd releases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingoraExit {
    /// The drain is over: pingora's graceful terminate (with a zero grace period).
    Drained,
    /// Stop now.
    Fast,
}

/// The one party that ends pingora's main loop: proxyd's shutdown logic.
#[derive(Debug)]
pub struct PingoraRelease {
    tx: watch::Sender<Option<PingoraExit>>,
}

/// What pingora's `Server::run` waits on instead of Unix signals (proxyd handles SIGTERM
/// and SIGINT itself). If the releasing side is dropped without a word (its thread
/// died), pingora stops at once rather than running forever.
#[derive(Debug)]
pub struct PingoraShutdownWatch {
    rx: watch::Receiver<Option<PingoraExit>>,
}

/// A connected release / watch pair.
pub fn pingora_release() -> (PingoraRelease, PingoraShutdownWatch) {
    let (tx, rx) = watch::channel(None);
    (PingoraRelease { tx }, PingoraShutdownWatch { rx })
}

impl PingoraRelease {
    /// Lets pingora's main loop end.
    pub fn release(&self, exit: PingoraExit) {
        self.tx.send_replace(Some(exit));
    }
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for PingoraShutdownWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.rx.clone();
        let exit = rx.wait_for(Option::is_some).await.map(|exit| *exit);
        match exit {
            Ok(Some(PingoraExit::Drained)) => ShutdownSignal::GracefulTerminate,
            Ok(_) | Err(_) => ShutdownSignal::FastShutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_drain_ends_by_work_grace_or_interruption() {
        let connections = Connections::new();
        let requests = InFlight::new();
        let tunnels = InFlight::new();
        let never = std::future::pending::<()>;
        let later = || Instant::now() + Duration::from_secs(60);
        let soon = || Instant::now() + Duration::from_millis(10);
        let service = connections.end_of_service();
        // The service still runs (its cleanup may still hand it connections).
        assert_eq!(
            wait_for_idle(&connections, &requests, &tunnels, soon(), never()).await,
            DrainOutcome::GraceExpired(CutOff {
                connections: 0,
                silent: 0,
                requests: 0,
                tunnels: 0,
            })
        );
        drop(service);
        assert_eq!(
            wait_for_idle(&connections, &requests, &tunnels, later(), never()).await,
            DrainOutcome::Idle
        );
        let _request = requests.enter();
        let _connection = connections.count_one_open();
        let _websocket = (tunnels.enter(), connections.count_one_open());
        let stuck = CutOff {
            connections: 2,
            silent: 0,
            requests: 1,
            tunnels: 1,
        };
        assert_eq!(
            wait_for_idle(&connections, &requests, &tunnels, soon(), never()).await,
            DrainOutcome::GraceExpired(stuck)
        );
        assert_eq!(
            wait_for_idle(&connections, &requests, &tunnels, later(), async {}).await,
            DrainOutcome::Interrupted(stuck)
        );
    }

    #[tokio::test]
    async fn pingora_ends_as_released_or_when_the_releaser_is_gone() {
        let (release, watch) = pingora_release();
        release.release(PingoraExit::Drained);
        assert!(matches!(
            watch.recv().await,
            ShutdownSignal::GracefulTerminate
        ));
        let (release, watch) = pingora_release();
        release.release(PingoraExit::Fast);
        assert!(matches!(watch.recv().await, ShutdownSignal::FastShutdown));
        let (release, watch) = pingora_release();
        drop(release);
        assert!(matches!(watch.recv().await, ShutdownSignal::FastShutdown));
    }
}
