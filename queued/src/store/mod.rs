//! The queue's sled layout and its state transitions.
//!
//! Trees:
//! - `jobs`: id -> [`JobRecord`] (queue, tries, attempts, state) of every live job;
//! - `payloads`: id -> the raw payload, of live and failed jobs, written once at push;
//! - `ready`: `(queue, available_at_ms, id)` -> empty, the waiting jobs in FIFO order;
//! - `reserved`: `(deadline_ms, id)` -> empty, the reservations by expiry;
//! - `failed`: `(queue, id)` -> [`FailedRecord`];
//! - `counters`: queue -> [`QueueCounts`];
//! - `meta`: the sequence number of the last log record applied (see [`redo`]).
//!
//! Every transition of a job is one sled transaction over the record, its index entries
//! and the counters, so a crash never leaves a job in two states or none. The durable
//! operations (push, ack, fail, retry and forget of failed jobs) are planned first, as
//! [`Redo`] steps, then applied together with their log record's number; reserve and the
//! reaper's moves change the trees directly and are not logged. The store does not
//! serialise callers itself and never flushes: the caller holds one lock around it (see
//! [`crate::engine`]) and makes operations durable through the log (see [`crate::log`]).

mod failed;
pub mod keys;
pub mod records;
pub mod redo;
mod tx;
mod types;

use sled::transaction::TransactionError;
use sled::{Db, IVec, Transactional, Tree};

use crate::backoff::Backoff;
use records::{FailedRecord, JobRecord, JobState, QueueCounts, RecordError};
pub use redo::Redo;
use tx::{Tx, TxResult, abort};
pub use types::{
    FailOutcome, FailedChange, FailedJob, FailedList, FailedSelection, NewJob, QueueStats, Reaped,
    Reservation, ReservedJob, expired_error,
};

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
    meta: Tree,
}

/// Tree names.
const JOBS: &str = "jobs";
const PAYLOADS: &str = "payloads";
const READY: &str = "ready";
const RESERVED: &str = "reserved";
const FAILED: &str = "failed";
const COUNTERS: &str = "counters";
const META: &str = "meta";

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
            meta: db.open_tree(META)?,
            db,
        })
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
            &self.meta,
        );
        trees
            .transaction(
                |(jobs, payloads, ready, reserved, failed, counters, meta)| {
                    f(&Tx {
                        jobs,
                        payloads,
                        ready,
                        reserved,
                        failed,
                        counters,
                        meta,
                    })
                },
            )
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    /// Plans the push of `job`: its id (never 0) and the step that enqueues it.
    pub fn plan_push(&self, job: NewJob<'_>, now_ms: u64) -> Result<(u64, Vec<Redo>), StoreError> {
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
        let payload = job.payload.to_vec();
        Ok((
            id,
            vec![Redo::Pushed {
                id,
                record,
                payload,
            }],
        ))
    }

    /// Reserves the oldest job of `queue` available at `now_ms` for `timeout_ms`,
    /// counting the attempt. Jobs for which `hidden` says yes are passed over as if they
    /// were not there (see [`crate::engine`]: their write is not durable yet).
    pub fn reserve(
        &self,
        queue: &str,
        now_ms: u64,
        timeout_ms: u64,
        hidden: impl Fn(u64) -> bool,
    ) -> Result<Reservation, StoreError> {
        loop {
            let Some((key, entry)) = self.first_ready(queue, &hidden)? else {
                return Ok(Reservation::Empty {
                    next_available_at_ms: None,
                });
            };
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

    /// The oldest entry of `queue`'s ready index that `hidden` does not hide, with its key.
    fn first_ready(
        &self,
        queue: &str,
        hidden: impl Fn(u64) -> bool,
    ) -> Result<Option<(IVec, keys::ReadyKey)>, StoreError> {
        for key in self.ready.scan_prefix(keys::queue_prefix(queue)).keys() {
            let key = key?;
            let entry = keys::parse_ready_key(&key)
                .ok_or_else(|| StoreError::Inconsistent(format!("ready key {key:?}")))?;
            if !hidden(entry.id) {
                return Ok(Some((key, entry)));
            }
        }
        Ok(None)
    }

    /// The live job `id`, reserved at `attempt` (if given), with its reservation's deadline.
    fn reserved_job(&self, id: u64, attempt: Option<u32>) -> Result<(JobRecord, u64), StoreError> {
        let job: JobRecord = match self.jobs.get(keys::id_key(id))? {
            Some(bytes) => records::decode("job", &bytes)?,
            None => return Err(StoreError::NotReserved(id)),
        };
        let JobState::Reserved { until_ms } = job.state else {
            return Err(StoreError::NotReserved(id));
        };
        check_attempt(id, &job, attempt)?;
        Ok((job, until_ms))
    }

    /// Plans the removal of a reserved job (its work is done).
    pub fn plan_ack(&self, id: u64, attempt: Option<u32>) -> Result<Vec<Redo>, StoreError> {
        self.reserved_job(id, attempt)?;
        Ok(vec![Redo::Removed { id }])
    }

    /// Plans a failed attempt of a reserved job: back to its queue after the backoff, or
    /// to the failed list after its last attempt.
    pub fn plan_fail(
        &self,
        id: u64,
        attempt: Option<u32>,
        error: &str,
        now_ms: u64,
        backoff: &Backoff,
    ) -> Result<(FailOutcome, Vec<Redo>), StoreError> {
        let (mut job, _) = self.reserved_job(id, attempt)?;
        if job.attempts < job.max_tries {
            let at_ms = now_ms.saturating_add(backoff.delay_ms(job.attempts));
            job.state = JobState::Waiting {
                available_at_ms: at_ms,
            };
            let outcome = FailOutcome::Retry {
                queue: job.queue.clone(),
                at_ms,
            };
            Ok((outcome, vec![Redo::Moved { id, record: job }]))
        } else {
            let record = FailedRecord {
                id,
                queue: job.queue,
                attempts: job.attempts,
                error: error.to_string(),
                failed_at_ms: now_ms,
            };
            Ok((FailOutcome::Failed, vec![Redo::Failed { record }]))
        }
    }

    /// Plans putting a reserved job back on its queue, available at `at_ms`, recording no
    /// error; returns the job's queue.
    pub fn plan_release(
        &self,
        id: u64,
        attempt: Option<u32>,
        at_ms: u64,
    ) -> Result<(String, Vec<Redo>), StoreError> {
        let (mut job, _) = self.reserved_job(id, attempt)?;
        job.state = JobState::Waiting {
            available_at_ms: at_ms,
        };
        Ok((job.queue.clone(), vec![Redo::Moved { id, record: job }]))
    }

    /// Extends the reservation of a reserved job to `until_ms` (not logged, as Reserve).
    pub fn touch(&self, id: u64, attempt: Option<u32>, until_ms: u64) -> Result<(), StoreError> {
        self.transact(|tx| {
            let Some(mut job) = tx.job(id)? else {
                return abort(StoreError::NotReserved(id));
            };
            let JobState::Reserved { until_ms: old } = job.state else {
                return abort(StoreError::NotReserved(id));
            };
            if let Err(e) = check_attempt(id, &job, attempt) {
                return abort(e);
            }
            tx.reserved.remove(keys::reserved_key(old, id))?;
            tx.reserved
                .insert(keys::reserved_key(until_ms, id), &[][..])?;
            job.state = JobState::Reserved { until_ms };
            tx.put_job(id, &job)
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
