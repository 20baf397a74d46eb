//! The queue's sled layout and its state transitions.
//!
//! Trees:
//! - `jobs`: id -> [`JobRecord`] (queue, tries, attempts, state) of every live job;
//! - `payloads`: id -> the raw payload, of live and failed jobs, written once at push;
//! - `ready`: `(queue, available_at_ms, id)` -> empty, the waiting jobs in FIFO order;
//! - `reserved`: `(deadline_ms, id)` -> empty, the reservations by expiry;
//! - `failed`: `(queue, id)` -> [`FailedRecord`];
//! - `counters`: queue -> [`QueueCounts`].
//!
//! Every transition (push, reserve, ack, fail, expire) is one sled transaction over the
//! record, its index entries and the counters, so a crash never leaves a job in two states
//! or none. The store does not serialise callers itself and never flushes: the caller
//! holds one lock around it (see [`crate::engine`]) and makes writes durable through the
//! committer (see [`crate::commit`]).

pub mod keys;
pub mod records;

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::{Db, IVec, Transactional, Tree};

use crate::backoff::Backoff;
use records::{FailedRecord, JobRecord, JobState, QueueCounts, RecordError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, or its own corruption checks).
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record is unreadable.
    #[error("stored record: {0}")]
    Record(#[from] RecordError),
    /// A key or an id is malformed or out of range.
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
    /// Ack or Fail of a job that is not reserved.
    #[error("job {0} is not reserved")]
    NotReserved(u64),
    /// Ack or Fail for an attempt whose reservation expired; the job is now reserved by
    /// a later attempt.
    #[error(
        "job {id}: the reservation of attempt {attempt} expired; it is now at attempt {current}"
    )]
    StaleReservation {
        /// The job.
        id: u64,
        /// The attempt the caller held.
        attempt: u32,
        /// The attempt that holds it now.
        current: u32,
    },
}

/// Checks that `job`, reserved, is still at the `attempt` the caller holds (if given).
fn check_attempt(id: u64, job: &JobRecord, attempt: Option<u32>) -> Result<(), StoreError> {
    match attempt {
        Some(attempt) if attempt != job.attempts => Err(StoreError::StaleReservation {
            id,
            attempt,
            current: job.attempts,
        }),
        _ => Ok(()),
    }
}

/// Which failed jobs an operation applies to: `ids` (all of them when empty), within
/// `queue` when set.
#[derive(Debug, Clone, Copy)]
pub struct FailedSelection<'a> {
    /// The jobs; empty: every failed job.
    pub ids: &'a [u64],
    /// Only this queue's.
    pub queue: Option<&'a str>,
}

/// A failed job picked for a retry or forget, with its `failed` key.
type PickedFailed = (IVec, FailedRecord);

/// What a retry or forget did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailedChange {
    /// Jobs retried or forgotten.
    pub count: u64,
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

/// The queue's trees.
#[derive(Debug)]
pub struct Store {
    db: Db,
    jobs: Tree,
    payloads: Tree,
    ready: Tree,
    reserved: Tree,
    failed: Tree,
    counters: Tree,
}

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

fn abort<T>(error: impl Into<StoreError>) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error.into()))
}

/// The trees as one transaction sees them.
struct Tx<'a> {
    jobs: &'a TransactionalTree,
    payloads: &'a TransactionalTree,
    ready: &'a TransactionalTree,
    reserved: &'a TransactionalTree,
    failed: &'a TransactionalTree,
    counters: &'a TransactionalTree,
}

impl Tx<'_> {
    fn job(&self, id: u64) -> TxResult<Option<JobRecord>> {
        match self.jobs.get(keys::id_key(id))? {
            Some(bytes) => match records::decode("job", &bytes) {
                Ok(job) => Ok(Some(job)),
                Err(e) => abort(e),
            },
            None => Ok(None),
        }
    }

    fn put_job(&self, id: u64, job: &JobRecord) -> TxResult<()> {
        match records::encode("job", job) {
            Ok(bytes) => {
                self.jobs.insert(keys::id_key(id), bytes)?;
                Ok(())
            }
            Err(e) => abort(e),
        }
    }

    fn count(&self, queue: &str, change: impl FnOnce(&mut QueueCounts)) -> TxResult<()> {
        let mut counts = match self.counters.get(queue.as_bytes())? {
            Some(bytes) => match records::decode("counters", &bytes) {
                Ok(counts) => counts,
                Err(e) => return abort(e),
            },
            None => QueueCounts::default(),
        };
        change(&mut counts);
        match records::encode("counters", &counts) {
            Ok(bytes) => {
                self.counters.insert(queue.as_bytes(), bytes)?;
                Ok(())
            }
            Err(e) => abort(e),
        }
    }

    fn wait(&self, id: u64, job: &mut JobRecord, available_at_ms: u64) -> TxResult<()> {
        job.state = JobState::Waiting { available_at_ms };
        self.put_job(id, job)?;
        self.ready
            .insert(keys::ready_key(&job.queue, available_at_ms, id), &[][..])?;
        Ok(())
    }

    /// Moves a reserved job (its `reserved` entry already removed) to the failed list.
    fn fail_for_good(&self, id: u64, job: &JobRecord, error: &str, now_ms: u64) -> TxResult<()> {
        let record = FailedRecord {
            id,
            queue: job.queue.clone(),
            attempts: job.attempts,
            error: error.to_string(),
            failed_at_ms: now_ms,
        };
        let bytes = match records::encode("failed job", &record) {
            Ok(bytes) => bytes,
            Err(e) => return abort(e),
        };
        self.jobs.remove(keys::id_key(id))?;
        self.failed
            .insert(keys::failed_key(&job.queue, id), bytes)?;
        self.count(&job.queue, |c| {
            c.reserved = c.reserved.saturating_sub(1);
            c.failed += 1;
        })
    }
}

/// Bytes a listed failed job takes on the wire besides its payload, error and queue
/// name (field tags, lengths, the numbers), rounded up.
const FAILED_JOB_OVERHEAD: usize = 64;
/// Most failed jobs listed in one reply.
const MAX_LISTED_FAILED: usize = 10_000;

/// Tree names.
const JOBS: &str = "jobs";
const PAYLOADS: &str = "payloads";
const READY: &str = "ready";
const RESERVED: &str = "reserved";
const FAILED: &str = "failed";
const COUNTERS: &str = "counters";

impl Store {
    /// Opens (creating if needed) the queue's trees in `db`.
    pub fn open(db: Db) -> Result<Self, StoreError> {
        Ok(Self {
            jobs: db.open_tree(JOBS)?,
            payloads: db.open_tree(PAYLOADS)?,
            ready: db.open_tree(READY)?,
            reserved: db.open_tree(RESERVED)?,
            failed: db.open_tree(FAILED)?,
            counters: db.open_tree(COUNTERS)?,
            db,
        })
    }

    /// The database (for the committer's flushes).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes everything to the log (survives SIGKILL; see [`crate::commit`] for power loss).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn transact<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let trees = (
            &self.jobs,
            &self.payloads,
            &self.ready,
            &self.reserved,
            &self.failed,
            &self.counters,
        );
        trees
            .transaction(|(jobs, payloads, ready, reserved, failed, counters)| {
                f(&Tx {
                    jobs,
                    payloads,
                    ready,
                    reserved,
                    failed,
                    counters,
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    /// Enqueues a job and returns its id (never 0).
    pub fn push(&self, job: NewJob<'_>, now_ms: u64) -> Result<u64, StoreError> {
        let id = self
            .db
            .generate_id()?
            .checked_add(1)
            .ok_or_else(|| StoreError::Inconsistent("job ids are exhausted".into()))?;
        let record = JobRecord {
            queue: job.queue.to_string(),
            max_tries: job.max_tries,
            attempts: 0,
            created_at_ms: now_ms,
            state: JobState::Waiting {
                available_at_ms: job.available_at_ms,
            },
        };
        self.transact(|tx| {
            let mut record = record.clone();
            tx.payloads.insert(keys::id_key(id), job.payload)?;
            tx.wait(id, &mut record, job.available_at_ms)?;
            tx.count(job.queue, |c| {
                c.waiting += 1;
                c.pushed_total += 1;
            })
        })?;
        Ok(id)
    }

    /// Reserves the oldest job of `queue` available at `now_ms` for `timeout_ms`,
    /// counting the attempt.
    pub fn reserve(
        &self,
        queue: &str,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<Reservation, StoreError> {
        loop {
            let Some(first) = self
                .ready
                .scan_prefix(keys::queue_prefix(queue))
                .keys()
                .next()
            else {
                return Ok(Reservation::Empty {
                    next_available_at_ms: None,
                });
            };
            let key = first?;
            let entry = keys::parse_ready_key(&key)
                .ok_or_else(|| StoreError::Inconsistent(format!("ready key {key:?}")))?;
            if entry.available_at_ms > now_ms {
                return Ok(Reservation::Empty {
                    next_available_at_ms: Some(entry.available_at_ms),
                });
            }
            let id = entry.id;
            let until_ms = now_ms.saturating_add(timeout_ms);
            let reserved = self.transact(|tx| {
                tx.ready.remove(key.clone())?;
                let Some(mut job) = tx.job(id)? else {
                    return Ok(None);
                };
                if job.state
                    != (JobState::Waiting {
                        available_at_ms: entry.available_at_ms,
                    })
                {
                    return Ok(None);
                }
                let Some(payload) = tx.payloads.get(keys::id_key(id))? else {
                    return abort(StoreError::Inconsistent(format!("job {id} has no payload")));
                };
                job.attempts = job.attempts.saturating_add(1);
                job.state = JobState::Reserved { until_ms };
                tx.put_job(id, &job)?;
                tx.reserved
                    .insert(keys::reserved_key(until_ms, id), &[][..])?;
                tx.count(queue, |c| {
                    c.waiting = c.waiting.saturating_sub(1);
                    c.reserved += 1;
                })?;
                Ok(Some(ReservedJob {
                    id,
                    queue: job.queue.clone(),
                    payload: payload.to_vec(),
                    attempt: job.attempts,
                    max_tries: job.max_tries,
                    created_at_ms: job.created_at_ms,
                    reserved_until_ms: until_ms,
                }))
            })?;
            match reserved {
                Some(job) => return Ok(Reservation::Reserved(job)),
                // An index entry without its job cannot come from a transaction; it is
                // dropped (nothing else refers to it) and the next entry tried.
                None => tracing::error!(id, queue, "removed a ready entry without its job"),
            }
        }
    }

    /// Removes a reserved job (its work is done).
    pub fn ack(&self, id: u64, attempt: Option<u32>) -> Result<(), StoreError> {
        self.transact(|tx| {
            let Some(job) = tx.job(id)? else {
                return abort(StoreError::NotReserved(id));
            };
            let JobState::Reserved { until_ms } = job.state else {
                return abort(StoreError::NotReserved(id));
            };
            if let Err(e) = check_attempt(id, &job, attempt) {
                return abort(e);
            }
            tx.jobs.remove(keys::id_key(id))?;
            tx.payloads.remove(keys::id_key(id))?;
            tx.reserved.remove(keys::reserved_key(until_ms, id))?;
            tx.count(&job.queue, |c| c.reserved = c.reserved.saturating_sub(1))
        })
    }

    /// Records a failed attempt of a reserved job: back to its queue after the backoff,
    /// or to the failed list after its last attempt.
    pub fn fail(
        &self,
        id: u64,
        attempt: Option<u32>,
        error: &str,
        now_ms: u64,
        backoff: &Backoff,
    ) -> Result<FailOutcome, StoreError> {
        self.transact(|tx| {
            let Some(mut job) = tx.job(id)? else {
                return abort(StoreError::NotReserved(id));
            };
            let JobState::Reserved { until_ms } = job.state else {
                return abort(StoreError::NotReserved(id));
            };
            if let Err(e) = check_attempt(id, &job, attempt) {
                return abort(e);
            }
            tx.reserved.remove(keys::reserved_key(until_ms, id))?;
            if job.attempts < job.max_tries {
                let at_ms = now_ms.saturating_add(backoff.delay_ms(job.attempts));
                tx.wait(id, &mut job, at_ms)?;
                tx.count(&job.queue, |c| {
                    c.reserved = c.reserved.saturating_sub(1);
                    c.waiting += 1;
                })?;
                Ok(FailOutcome::Retry {
                    queue: job.queue.clone(),
                    at_ms,
                })
            } else {
                tx.fail_for_good(id, &job, error, now_ms)?;
                Ok(FailOutcome::Failed)
            }
        })
    }

    /// Handles at most `limit` reservations that expired by `now_ms`: back to their queue
    /// (available since their deadline), or to the failed list when that was their last
    /// attempt.
    pub fn reap(&self, now_ms: u64, limit: usize) -> Result<Reaped, StoreError> {
        let expired = self
            .reserved
            .range(..=keys::reserved_key(now_ms, u64::MAX))
            .keys()
            .take(limit.saturating_add(1))
            .collect::<Result<Vec<IVec>, _>>()?;
        let mut reaped = Reaped {
            more: expired.len() > limit,
            ..Reaped::default()
        };
        for key in expired.iter().take(limit) {
            let (until_ms, id) = keys::parse_reserved_key(key)
                .ok_or_else(|| StoreError::Inconsistent(format!("reserved key {key:?}")))?;
            let outcome = self.transact(|tx| {
                tx.reserved.remove(key.clone())?;
                let Some(mut job) = tx.job(id)? else {
                    return Ok(None);
                };
                if job.state != (JobState::Reserved { until_ms }) {
                    return Ok(None);
                }
                if job.attempts < job.max_tries {
                    tx.wait(id, &mut job, until_ms)?;
                    tx.count(&job.queue, |c| {
                        c.reserved = c.reserved.saturating_sub(1);
                        c.waiting += 1;
                    })?;
                    Ok(Some(Some(job.queue)))
                } else {
                    tx.fail_for_good(id, &job, &expired_error(job.attempts), now_ms)?;
                    Ok(Some(None))
                }
            })?;
            match outcome {
                Some(Some(queue)) => {
                    reaped.returned += 1;
                    if !reaped.returned_to.contains(&queue) {
                        reaped.returned_to.push(queue);
                    }
                }
                Some(None) => reaped.failed += 1,
                None => tracing::error!(id, "removed a reserved entry without its job"),
            }
        }
        Ok(reaped)
    }

    /// The earliest reservation deadline, Unix ms.
    pub fn next_deadline(&self) -> Result<Option<u64>, StoreError> {
        match self.reserved.first()? {
            Some((key, _)) => keys::parse_reserved_key(&key)
                .map(|(until_ms, _)| Some(until_ms))
                .ok_or_else(|| StoreError::Inconsistent(format!("reserved key {key:?}"))),
            None => Ok(None),
        }
    }

    /// The failed list of `queue` (or of every queue), by queue then id, holding at most
    /// about `max_bytes` of payloads and errors (and at least one job).
    pub fn list_failed(
        &self,
        queue: Option<&str>,
        max_bytes: usize,
    ) -> Result<FailedList, StoreError> {
        let entries = match queue {
            Some(queue) => self.failed.scan_prefix(keys::queue_prefix(queue)),
            None => self.failed.iter(),
        };
        let mut list = FailedList::default();
        let mut bytes = 0usize;
        for entry in entries {
            let (_, value) = entry?;
            if list.omitted > 0 {
                list.omitted += 1;
                continue;
            }
            let record: FailedRecord = records::decode("failed job", &value)?;
            let payload = self
                .payloads
                .get(keys::id_key(record.id))?
                .map(|p| p.to_vec())
                .unwrap_or_default();
            let size =
                payload.len() + record.error.len() + record.queue.len() + FAILED_JOB_OVERHEAD;
            if !list.jobs.is_empty()
                && (bytes.saturating_add(size) > max_bytes || list.jobs.len() >= MAX_LISTED_FAILED)
            {
                list.omitted = 1;
                continue;
            }
            bytes = bytes.saturating_add(size);
            list.jobs.push(FailedJob { record, payload });
        }
        Ok(list)
    }

    /// The failed jobs `which` picks, with their `failed` keys; requested ids that are
    /// not failed come back in the second list.
    fn select_failed(
        &self,
        which: &FailedSelection<'_>,
    ) -> Result<(Vec<PickedFailed>, Vec<u64>), StoreError> {
        let entries = match which.queue {
            Some(queue) => self.failed.scan_prefix(keys::queue_prefix(queue)),
            None => self.failed.iter(),
        };
        let mut picked = Vec::new();
        let mut missing: std::collections::BTreeSet<u64> = which.ids.iter().copied().collect();
        for entry in entries {
            let (key, value) = entry?;
            let record: FailedRecord = records::decode("failed job", &value)?;
            if which.ids.is_empty() || missing.remove(&record.id) {
                picked.push((key, record));
            }
            if !which.ids.is_empty() && missing.is_empty() {
                break;
            }
        }
        Ok((picked, missing.into_iter().collect()))
    }

    /// Puts the failed jobs `which` picks back on their queues, available at `now_ms`,
    /// as new jobs with `max_tries` attempts (ids and payloads kept). Each job moves in
    /// its own transaction.
    pub fn retry_failed(
        &self,
        which: &FailedSelection<'_>,
        now_ms: u64,
        max_tries: u32,
    ) -> Result<FailedChange, StoreError> {
        let (picked, missing) = self.select_failed(which)?;
        let mut change = FailedChange {
            missing,
            ..FailedChange::default()
        };
        for (key, record) in picked {
            let moved = self.transact(|tx| {
                if tx.failed.remove(key.clone())?.is_none() {
                    return Ok(false);
                }
                let mut job = JobRecord {
                    queue: record.queue.clone(),
                    max_tries,
                    attempts: 0,
                    created_at_ms: now_ms,
                    state: JobState::Waiting {
                        available_at_ms: now_ms,
                    },
                };
                tx.wait(record.id, &mut job, now_ms)?;
                tx.count(&record.queue, |c| {
                    c.failed = c.failed.saturating_sub(1);
                    c.waiting += 1;
                })?;
                Ok(true)
            })?;
            if moved {
                change.count += 1;
                change.queues.insert(record.queue);
            }
        }
        Ok(change)
    }

    /// Removes the failed jobs `which` picks, payloads included.
    pub fn forget_failed(&self, which: &FailedSelection<'_>) -> Result<FailedChange, StoreError> {
        let (picked, missing) = self.select_failed(which)?;
        let mut change = FailedChange {
            missing,
            ..FailedChange::default()
        };
        for (key, record) in picked {
            let removed = self.transact(|tx| {
                if tx.failed.remove(key.clone())?.is_none() {
                    return Ok(false);
                }
                tx.payloads.remove(keys::id_key(record.id))?;
                tx.count(&record.queue, |c| c.failed = c.failed.saturating_sub(1))?;
                Ok(true)
            })?;
            if removed {
                change.count += 1;
                change.queues.insert(record.queue);
            }
        }
        Ok(change)
    }

    /// Every queue's figures at `now_ms`, by queue name.
    pub fn stats(&self, now_ms: u64) -> Result<Vec<QueueStats>, StoreError> {
        let mut all = Vec::new();
        for entry in self.counters.iter() {
            let (key, value) = entry?;
            let queue = String::from_utf8(key.to_vec())
                .map_err(|_| StoreError::Inconsistent(format!("counters key {key:?}")))?;
            let counts: QueueCounts = records::decode("counters", &value)?;
            let prefix = keys::queue_prefix(&queue);
            let mut delayed = 0u64;
            for key in self
                .ready
                .range(keys::ready_key_after(&queue, now_ms)..)
                .keys()
            {
                if !key?.starts_with(&prefix) {
                    break;
                }
                delayed += 1;
            }
            all.push(QueueStats {
                ready: counts.waiting.saturating_sub(delayed),
                delayed,
                reserved: counts.reserved,
                failed: counts.failed,
                pushed_total: counts.pushed_total,
                queue,
            });
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests;
