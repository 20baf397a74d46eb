//! Counting work in flight, so that a graceful stop waits for the work and not for a
//! timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Units of work in flight (requests, queries, RPCs), across threads.
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

    /// Counts one unit until the guard is dropped, however the work ends.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Units in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so work ending in between is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unit of work in flight.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let work = InFlight::new();
        work.idle().await;
        let first = work.enter();
        let second = work.enter();
        assert_eq!(work.count(), 2);
        drop(first);
        let waiting = tokio::time::timeout(Duration::from_millis(20), work.idle()).await;
        assert!(waiting.is_err(), "one unit is still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), work.idle())
            .await
            .expect("idle once every guard is gone");
    }
}
