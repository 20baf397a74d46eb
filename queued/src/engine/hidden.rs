//! Jobs made ready by writes that are not durable yet, which Reserve passes over.
//!
//! A write that makes jobs ready (a push, a retry after a failed attempt, a retry of failed
//! jobs) hides them under its log record's number before the engine's lock is let go.
//! They show once the log's durable watermark reaches that number (see [`crate::log`]): a
//! job is handed out only once the record that made it ready is on disk. If that sync
//! fails, queued exits and the job was never handed out.

use std::collections::{HashMap, VecDeque};

/// The hidden jobs.
#[derive(Debug, Default)]
pub struct Hidden {
    /// Job id -> the number of the latest write that made it ready.
    by_id: HashMap<u64, u64>,
    /// `(number, id)` in the order hidden, which is the numbers' order (both happen under
    /// the engine's lock).
    order: VecDeque<(u64, u64)>,
}

impl Hidden {
    /// Hides `ids` until the watermark reaches `seq`.
    pub fn hide(&mut self, ids: &[u64], seq: u64) {
        for &id in ids {
            self.by_id.insert(id, seq);
            self.order.push_back((seq, id));
        }
    }

    /// Shows every job whose write is numbered at most `durable`.
    pub fn show_up_to(&mut self, durable: u64) {
        while let Some(&(seq, id)) = self.order.front() {
            if seq > durable {
                break;
            }
            self.order.pop_front();
            // A later write may have hidden the job again under a higher number.
            if self.by_id.get(&id) == Some(&seq) {
                self.by_id.remove(&id);
            }
        }
    }

    /// Whether the job `id` is hidden.
    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// How many jobs are hidden.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_show_once_their_latest_write_is_durable() {
        let mut hidden = Hidden::default();
        hidden.hide(&[1, 2], 10);
        hidden.hide(&[3], 11);
        hidden.hide(&[1], 12);
        hidden.show_up_to(9);
        assert!(hidden.contains(1) && hidden.contains(2) && hidden.contains(3));
        hidden.show_up_to(11);
        assert!(!hidden.contains(2) && !hidden.contains(3));
        assert!(hidden.contains(1), "hidden again by write 12");
        hidden.show_up_to(12);
        assert!(!hidden.contains(1));
        assert!(hidden.order.is_empty() && hidden.by_id.is_empty());
    }
}
