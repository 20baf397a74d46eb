//! Wake-ups for Reserve calls waiting on an empty queue.
//!
//! A waiting call subscribes to its queue; whatever makes a job available or changes when
//! one will be (push, retry, expired reservation) wakes every subscriber of that queue,
//! which then looks again. A queue's entry lives only while someone waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Subscribers by queue.
#[derive(Debug, Default)]
pub struct Wakeups {
    queues: Mutex<HashMap<String, Waiting>>,
}

/// The calls waiting on one queue.
#[derive(Debug, Default)]
struct Waiting {
    notify: Arc<Notify>,
    subscribers: usize,
}

/// One waiting call's interest in a queue.
#[derive(Debug)]
pub struct Subscription<'a> {
    wakeups: &'a Wakeups,
    queue: String,
    notify: Arc<Notify>,
}

impl Wakeups {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, Waiting>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to `queue`.
    pub fn subscribe(&self, queue: &str) -> Subscription<'_> {
        let mut queues = self.queues();
        let waiting = queues.entry(queue.to_string()).or_default();
        waiting.subscribers += 1;
        Subscription {
            wakeups: self,
            queue: queue.to_string(),
            notify: waiting.notify.clone(),
        }
    }

    /// Wakes one call waiting on `queue`: one job became available.
    pub fn wake_one(&self, queue: &str) {
        if let Some(waiting) = self.queues().get(queue) {
            waiting.notify.notify_one();
        }
    }

    /// Wakes every call waiting on `queue`: several jobs, or when the next one will be,
    /// changed.
    pub fn wake(&self, queue: &str) {
        if let Some(waiting) = self.queues().get(queue) {
            waiting.notify.notify_waiters();
        }
    }

    /// Queues someone waits on.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.queues().len()
    }
}

impl Subscription<'_> {
    /// A future that completes at the next wake-up. Call `enable` on it (pinned) before
    /// looking at the queue, so that a wake-up in between is not missed.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut queues = self.wakeups.queues();
        if let Some(waiting) = queues.get_mut(&self.queue) {
            waiting.subscribers = waiting.subscribers.saturating_sub(1);
            if waiting.subscribers == 0 {
                queues.remove(&self.queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_enabled_subscribers_and_entries_go_with_them() {
        let wakeups = Wakeups::default();
        let first = wakeups.subscribe("q");
        let second = wakeups.subscribe("q");
        {
            let notified = first.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            wakeups.wake("other");
            wakeups.wake("q");
            notified.await;
        }
        assert_eq!(wakeups.watched(), 1);
        drop(first);
        assert_eq!(wakeups.watched(), 1);
        drop(second);
        assert_eq!(wakeups.watched(), 0);
    }
}
