//! Draining by work, not by timer.
//!
//! pingora's own graceful path broadcasts shutdown, then sleeps the whole
//! `grace_period_seconds` whatever is in flight, then drops its runtimes. proxyd instead:
//!
//! 1. stops accepting by flipping its own stop switch, which the proxy service watches
//!    instead of pingora's (see [`crate::service`]): the accept loops end and close the
//!    listening sockets, keep-alive connections end after their current request;
//! 2. waits until no request is in flight ([`InFlight`], counted from the moment a request
//!    header is read until its context is dropped), bounded by the grace period;
//! 3. only then releases pingora's main loop ([`PingoraRelease`]), whose own grace period
//!    is zero (see [`crate::conf`]), so its runtimes are dropped at once.

use std::future::Future;

use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use securely_core::drain::InFlight;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every request finished.
    Idle,
    /// The grace period ran out with requests still in flight.
    GraceExpired {
        /// Requests cut off.
        in_flight: usize,
    },
    /// A fast shutdown cut the drain short.
    Interrupted {
        /// Requests cut off.
        in_flight: usize,
    },
}

/// Waits until no request is in flight, at most until `deadline` (the end of the grace
/// period), or until `interrupt` resolves.
pub async fn wait_for_idle(
    in_flight: &InFlight,
    deadline: Instant,
    interrupt: impl Future<Output = ()>,
) -> DrainOutcome {
    tokio::select! {
        () = in_flight.idle() => DrainOutcome::Idle,
        () = tokio::time::sleep_until(deadline) => DrainOutcome::GraceExpired { in_flight: in_flight.count() },
        () = interrupt => DrainOutcome::Interrupted { in_flight: in_flight.count() },
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
        let in_flight = InFlight::new();
        let never = std::future::pending::<()>;
        let later = || Instant::now() + Duration::from_secs(60);
        assert_eq!(
            wait_for_idle(&in_flight, later(), never()).await,
            DrainOutcome::Idle
        );
        let _stuck = in_flight.enter();
        assert_eq!(
            wait_for_idle(
                &in_flight,
                Instant::now() + Duration::from_millis(10),
                never()
            )
            .await,
            DrainOutcome::GraceExpired { in_flight: 1 }
        );
        assert_eq!(
            wait_for_idle(&in_flight, later(), async {}).await,
            DrainOutcome::Interrupted { in_flight: 1 }
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
