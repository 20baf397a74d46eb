//! Wake-ups for Reserve calls waiting on empty queues.
//!
//! A waiting call subscribes to its queues (one, or several in priority order) with one
//! notification of its own; whatever makes a job available or changes when one will be
//! (push, retry, release, expired reservation) wakes the subscribers of that queue, which
//! then look again. A wake-up sent while a subscriber is looking is kept for it
//! (`Notify::notify_one` stores a permit), so none is missed. One job wakes one
//! subscriber, taking turns; several wake them all. A queue's entry lives only while
//! someone waits on it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Subscribers by queue, in the order they take turns.
#[derive(Debug, Default)]
pub struct Wakeups {
    queues: Mutex<HashMap<String, VecDeque<Arc<Notify>>>>,
}

/// One waiting call's interest in its queues.
#[derive(Debug)]
pub struct Subscription<'a> {
    wakeups: &'a Wakeups,
    queues: Vec<String>,
    notify: Arc<Notify>,
}

impl Wakeups {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Arc<Notify>>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to `queues`.
    pub fn subscribe(&self, queues: &[String]) -> Subscription<'_> {
        let notify = Arc::new(Notify::new());
        let mut all = self.queues();
        for queue in queues {
            all.entry(queue.clone())
                .or_default()
                .push_back(notify.clone());
        }
        Subscription {
            wakeups: self,
            queues: queues.to_vec(),
            notify,
        }
    }

    /// Wakes one call waiting on `queue` (the one whose turn it is): one job became
    /// available.
    pub fn wake_one(&self, queue: &str) {
        if let Some(waiting) = self.queues().get_mut(queue)
            && let Some(next) = waiting.pop_front()
        {
            next.notify_one();
            waiting.push_back(next);
        }
    }

    /// Wakes every call waiting on `queue`: several jobs, or when the next one will be,
    /// changed.
    pub fn wake(&self, queue: &str) {
        if let Some(waiting) = self.queues().get(queue) {
            for subscriber in waiting {
                subscriber.notify_one();
            }
        }
    }

    /// Queues someone waits on.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.queues().len()
    }
}

impl Subscription<'_> {
    /// Completes at the next wake-up of any of the queues, or at once if one came since
    /// the last.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Passes a wake-up on to the next subscriber of each of this call's queues but
    /// `taken_from`: this call may have been woken for a job there and taken one from
    /// `taken_from` instead, which must not leave that job waiting while others sleep.
    pub fn pass_on(&self, taken_from: &str) {
        for queue in self.queues.iter().filter(|q| *q != taken_from) {
            self.wakeups.wake_one(queue);
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut all = self.wakeups.queues();
        for queue in &self.queues {
            if let Some(waiting) = all.get_mut(queue) {
                waiting.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if waiting.is_empty() {
                    all.remove(queue);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn queues(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    async fn woken(subscription: &Subscription<'_>) -> bool {
        tokio::time::timeout(Duration::from_millis(20), subscription.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn wakes_reach_the_subscribers_of_a_queue_and_entries_go_with_them() {
        let wakeups = Wakeups::default();
        let first = wakeups.subscribe(&queues(&["q"]));
        let second = wakeups.subscribe(&queues(&["q", "other"]));
        wakeups.wake("q");
        assert!(woken(&first).await && woken(&second).await);
        // One job: one subscriber, taking turns.
        wakeups.wake_one("q");
        assert!(woken(&first).await);
        assert!(!woken(&second).await);
        wakeups.wake_one("q");
        assert!(!woken(&first).await);
        assert!(woken(&second).await);
        // A wake-up of the other queue reaches the call that waits on both.
        wakeups.wake_one("other");
        assert!(woken(&second).await);
        assert_eq!(wakeups.watched(), 2);
        drop(second);
        assert_eq!(wakeups.watched(), 1);
        drop(first);
        assert_eq!(wakeups.watched(), 0);
    }

    #[tokio::test]
    async fn a_wake_up_sent_while_looking_is_kept_and_can_be_passed_on() {
        let wakeups = Wakeups::default();
        let both = wakeups.subscribe(&queues(&["high", "low"]));
        let low = wakeups.subscribe(&queues(&["low"]));
        // Sent before the call waits: kept.
        wakeups.wake_one("low");
        assert!(woken(&both).await);
        // It took a job from "high" instead: "low"'s next subscriber gets the turn.
        both.pass_on("high");
        assert!(woken(&low).await);
    }
}
