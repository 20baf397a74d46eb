//! Counting the questions being answered, so that a graceful stop can wait for them.
//!
//! hickory's `Server` aborts its per-query tasks when it stops, so dnsd drains first:
//! it waits for this count to reach zero (bounded by the grace period), then stops the
//! server.

use tokio::sync::watch;

/// The number of questions being answered.
#[derive(Debug)]
pub struct InFlight {
    count: watch::Sender<usize>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl InFlight {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self {
            count: watch::channel(0).0,
        }
    }

    /// Counts one question until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.send_modify(|n| *n += 1);
        InFlightGuard { tracker: self }
    }

    /// Questions being answered now.
    pub fn current(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once nothing is in flight.
    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One question in flight.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    tracker: &'a InFlight,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.tracker.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let tracker = InFlight::new();
        tracker.idle().await;
        let first = tracker.enter();
        let second = tracker.enter();
        assert_eq!(tracker.current(), 2);
        drop(first);
        let waiting = tokio::time::timeout(Duration::from_millis(20), tracker.idle()).await;
        assert!(waiting.is_err(), "one question is still in flight");
        drop(second);
        tracker.idle().await;
        assert_eq!(tracker.current(), 0);
    }
}
