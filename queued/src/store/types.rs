//! What the store's operations take and return.

use super::records::FailedRecord;

/// Which failed jobs an operation applies to: `ids` (all of them when empty), within
/// `queue` when set.
#[derive(Debug, Clone, Copy)]
pub struct FailedSelection<'a> {
    /// The jobs; empty: every failed job.
    pub ids: &'a [u64],
    /// Only this queue's.
    pub queue: Option<&'a str>,
}

/// What a retry or forget did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailedChange {
    /// The jobs retried or forgotten.
    pub ids: Vec<u64>,
    /// Requested ids not in the failed list.
    pub missing: Vec<u64>,
    /// The queues the jobs belonged to.
    pub queues: std::collections::BTreeSet<String>,
}

/// A job to enqueue.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    /// The queue.
    pub queue: &'a str,
    /// The opaque payload.
    pub payload: &'a [u8],
    /// When the job may first be reserved, Unix ms.
    pub available_at_ms: u64,
    /// Attempts before it fails for good.
    pub max_tries: u32,
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedJob {
    /// The job.
    pub id: u64,
    /// Its queue.
    pub queue: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts before it fails for good.
    pub max_tries: u32,
    /// Unix ms of the push.
    pub created_at_ms: u64,
    /// Unix ms at which the reservation expires.
    pub reserved_until_ms: u64,
}

/// The result of a reservation attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The oldest available job, now reserved.
    Reserved(ReservedJob),
    /// Nothing available now; the earliest delayed job becomes available at this time.
    Empty {
        /// Unix ms, when a delayed job exists.
        next_available_at_ms: Option<u64>,
    },
}

/// What a failed attempt led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to the queue, available again at `at_ms`.
    Retry {
        /// The job's queue.
        queue: String,
        /// Unix ms of the retry.
        at_ms: u64,
    },
    /// Out of attempts: moved to the failed list.
    Failed,
}

/// What one pass of [`Store::reap`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Queues that got jobs back (each once).
    pub returned_to: Vec<String>,
    /// Jobs returned to their queue.
    pub returned: usize,
    /// Jobs that had used their last attempt and moved to the failed list.
    pub failed: usize,
    /// More expired reservations remain than the pass handled.
    pub more: bool,
}

/// A job in the failed list, with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedJob {
    /// What failed and why.
    pub record: FailedRecord,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Part of the failed list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedList {
    /// The jobs returned, by queue then id.
    pub jobs: Vec<FailedJob>,
    /// Failed jobs left out to respect the size limit.
    pub omitted: u64,
}

/// One queue's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Waiting and available now.
    pub ready: u64,
    /// Waiting for their time.
    pub delayed: u64,
    /// Reserved by workers.
    pub reserved: u64,
    /// In the failed list.
    pub failed: u64,
    /// Ever pushed.
    pub pushed_total: u64,
}

/// The error text of a reservation that expired on the job's last attempt.
pub fn expired_error(attempts: u32) -> String {
    format!("reservation expired after {attempts} attempts")
}
