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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::{Notify, watch};

/// Requests between "header read" and "done", across all proxy threads.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// A counter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one request until the guard is dropped (whatever way the request ends).
    pub fn enter(self: &Arc<Self>) -> RequestGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a request ending in between is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight; dropping it ends the request's count.
#[derive(Debug)]
pub struct RequestGuard(Arc<InFlight>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

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

/// Waits until no request is in flight, at most `grace`, or until `interrupt` resolves.
pub async fn wait_for_idle(
    in_flight: &InFlight,
    grace: Duration,
    interrupt: impl Future<Output = ()>,
) -> DrainOutcome {
    tokio::select! {
        () = in_flight.idle() => DrainOutcome::Idle,
        () = tokio::time::sleep(grace) => DrainOutcome::GraceExpired { in_flight: in_flight.count() },
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
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_request() {
        let in_flight = InFlight::new();
        in_flight.idle().await;
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.idle().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test]
    async fn a_drain_ends_by_work_grace_or_interruption() {
        let in_flight = InFlight::new();
        let never = std::future::pending::<()>;
        assert_eq!(
            wait_for_idle(&in_flight, Duration::from_secs(60), never()).await,
            DrainOutcome::Idle
        );
        let _stuck = in_flight.enter();
        assert_eq!(
            wait_for_idle(&in_flight, Duration::from_millis(10), never()).await,
            DrainOutcome::GraceExpired { in_flight: 1 }
        );
        assert_eq!(
            wait_for_idle(&in_flight, Duration::from_secs(60), async {}).await,
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
