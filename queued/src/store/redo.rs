//! What the queue's log records: the effect of each durable operation, as the state it
//! leaves each job in, and the one code path that applies it, live and on replay.
//!
//! An operation (push, ack, fail, a retry or forget of failed jobs) first decides, from
//! the store, what it does to which jobs: a list of [`Redo`] steps. Applying the steps
//! (one sled transaction per job at most) is the operation; the same steps, encoded, are
//! the log record that makes it durable (see [`crate::log`]), and replaying the record
//! applies them again through [`Tx::apply`].
//!
//! Every step sets a job's state rather than moving it from an assumed one: applying it
//! to a store that already has it, or that lacks a reservation or a reaper's move made in
//! between (those are not logged), leaves the same job in the same state, with its index
//! entries and the per-queue counters kept exact. So a record may be replayed onto a tree
//! that holds part or all of it.

use serde::{Deserialize, Serialize};

use super::records::{self, FailedRecord, JobRecord, JobState, RecordError};
use super::tx::{Tx, TxResult};
use super::{Store, StoreError, keys};
use crate::log::Lsn;

/// The `meta` key of the last log record applied.
const APPLIED_LSN: &[u8] = b"applied_lsn";

/// One step of a durable operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redo {
    /// A job pushed: live in `record`'s state, with its payload.
    Pushed {
        /// The job.
        id: u64,
        /// Its record.
        record: JobRecord,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A job live again or still (a retry after a failed attempt, or a failed job put
    /// back): now in `record`'s state, out of the failed list.
    Moved {
        /// The job.
        id: u64,
        /// Its record now.
        record: JobRecord,
    },
    /// A job done: gone, with its payload.
    Removed {
        /// The job.
        id: u64,
    },
    /// A job failed for good: out of the live jobs, into the failed list.
    Failed {
        /// Its failed-list record (its id included).
        record: FailedRecord,
    },
    /// A failed job forgotten: gone from the failed list, with its payload.
    Forgotten {
        /// The job's queue.
        queue: String,
        /// The job.
        id: u64,
    },
}

/// Encodes the steps of one operation as a log record's body.
pub fn encode(steps: &[Redo]) -> Result<Vec<u8>, RecordError> {
    records::encode("log record", &steps)
}

/// Decodes a log record's body.
pub fn decode(body: &[u8]) -> Result<Vec<Redo>, RecordError> {
    records::decode("log record", body)
}

impl Store {
    /// The sequence number of the last log record applied to the trees (0: none).
    pub fn applied_lsn(&self) -> Result<Lsn, StoreError> {
        match self.meta.get(APPLIED_LSN)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                    StoreError::Inconsistent(format!("applied log record {bytes:?}"))
                })?;
                Ok(Lsn::from_be_bytes(bytes))
            }
            None => Ok(0),
        }
    }

    /// Applies the steps of log record `lsn`: each step in its own transaction, the last
    /// one also recording `lsn` as applied (so a crash in between leaves `lsn` to be
    /// replayed, which the steps allow; see the module's doc).
    pub fn apply(&self, lsn: Lsn, steps: &[Redo]) -> Result<(), StoreError> {
        let Some((last, first)) = steps.split_last() else {
            self.meta.insert(APPLIED_LSN, &lsn.to_be_bytes())?;
            return Ok(());
        };
        for step in first {
            self.transact(|tx| tx.apply(step))?;
        }
        self.transact(|tx| {
            tx.apply(last)?;
            tx.meta.insert(APPLIED_LSN, &lsn.to_be_bytes())?;
            Ok(())
        })
    }

    /// Applies log record `lsn` again, from its body (recovery).
    pub fn replay(&self, lsn: Lsn, body: &[u8]) -> Result<(), StoreError> {
        self.apply(lsn, &decode(body)?)
    }
}

impl Tx<'_> {
    /// Applies `step`: the job ends up in the state it names, whatever state it was in.
    pub(super) fn apply(&self, step: &Redo) -> TxResult<()> {
        match step {
            Redo::Pushed {
                id,
                record,
                payload,
            } => {
                let known = self
                    .payloads
                    .insert(keys::id_key(*id), payload.as_slice())?;
                self.unindex(*id)?;
                self.index(*id, record)?;
                if known.is_none() {
                    self.count(&record.queue, |c| c.pushed_total += 1)?;
                }
                Ok(())
            }
            Redo::Moved { id, record } => {
                self.unfail(&record.queue, *id)?;
                self.unindex(*id)?;
                self.index(*id, record)
            }
            Redo::Removed { id } => {
                self.unindex(*id)?;
                self.jobs.remove(keys::id_key(*id))?;
                self.payloads.remove(keys::id_key(*id))?;
                Ok(())
            }
            Redo::Failed { record } => {
                self.unindex(record.id)?;
                self.jobs.remove(keys::id_key(record.id))?;
                let bytes = match records::encode("failed job", record) {
                    Ok(bytes) => bytes,
                    Err(e) => return super::tx::abort(e),
                };
                let key = keys::failed_key(&record.queue, record.id);
                if self.failed.insert(key, bytes)?.is_none() {
                    self.count(&record.queue, |c| c.failed += 1)?;
                }
                Ok(())
            }
            Redo::Forgotten { queue, id } => {
                self.unfail(queue, *id)?;
                self.payloads.remove(keys::id_key(*id))?;
                Ok(())
            }
        }
    }

    /// Takes live job `id` out of its index entry and its state's counter, if it is live.
    fn unindex(&self, id: u64) -> TxResult<()> {
        let Some(job) = self.job(id)? else {
            return Ok(());
        };
        match job.state {
            JobState::Waiting { available_at_ms } => {
                self.ready
                    .remove(keys::ready_key(&job.queue, available_at_ms, id))?;
                self.count(&job.queue, |c| c.waiting = c.waiting.saturating_sub(1))
            }
            JobState::Reserved { until_ms } => {
                self.reserved.remove(keys::reserved_key(until_ms, id))?;
                self.count(&job.queue, |c| c.reserved = c.reserved.saturating_sub(1))
            }
        }
    }

    /// Stores live job `id` as `record`, with its index entry and its state's counter.
    fn index(&self, id: u64, record: &JobRecord) -> TxResult<()> {
        self.put_job(id, record)?;
        match record.state {
            JobState::Waiting { available_at_ms } => {
                self.ready
                    .insert(keys::ready_key(&record.queue, available_at_ms, id), &[][..])?;
                self.count(&record.queue, |c| c.waiting += 1)
            }
            JobState::Reserved { until_ms } => {
                self.reserved
                    .insert(keys::reserved_key(until_ms, id), &[][..])?;
                self.count(&record.queue, |c| c.reserved += 1)
            }
        }
    }

    /// Takes job `id` of `queue` out of the failed list, if it is there.
    fn unfail(&self, queue: &str, id: u64) -> TxResult<()> {
        if self.failed.remove(keys::failed_key(queue, id))?.is_some() {
            self.count(queue, |c| c.failed = c.failed.saturating_sub(1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Ops;
    use super::super::*;
    use super::*;
    use crate::backoff::Backoff;

    const T: u64 = 1_700_000_000_000;

    fn open(dir: &std::path::Path) -> Store {
        Store::open(sled::Config::new().path(dir).open().unwrap()).unwrap()
    }

    /// Every tree's content except the reservations (not logged), to compare stores.
    fn content(store: &Store) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let trees = [
            &store.jobs,
            &store.payloads,
            &store.ready,
            &store.failed,
            &store.counters,
            &store.meta,
        ];
        trees
            .iter()
            .map(|tree| {
                tree.iter()
                    .map(|entry| {
                        let (k, v) = entry.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .collect()
            })
            .collect()
    }

    fn reserve(store: &Store, queue: &str) -> u64 {
        match store.reserve(queue, T, 1_000, |_| false).unwrap() {
            Reservation::Reserved(job) => job.id,
            Reservation::Empty { .. } => panic!("{queue} is empty"),
        }
    }

    /// Runs every kind of durable operation on `store`, with reservations in between, and
    /// ends with no job reserved. Returns the log records they made.
    fn workload(store: &Store) -> Vec<(Lsn, Vec<u8>)> {
        let backoff = Backoff::new(0, 0);
        let mut records = Vec::new();
        let mut run = |steps: Vec<Redo>| {
            let lsn = store.applied_lsn().unwrap() + 1;
            store.apply(lsn, &steps).unwrap();
            records.push((lsn, encode(&steps).unwrap()));
        };
        let job = |queue, max_tries| NewJob {
            queue,
            payload: b"payload",
            available_at_ms: T,
            max_tries,
        };
        for queue in ["a", "a", "b"] {
            run(store.plan_push(job(queue, 1), T).unwrap().1);
        }
        run(store.plan_push(job("c", 3), T).unwrap().1);
        let id = reserve(store, "a");
        run(store.plan_ack(id, None).unwrap());
        let id = reserve(store, "a");
        run(store.plan_fail(id, None, "boom", T, &backoff).unwrap().1);
        let id = reserve(store, "c");
        run(store.plan_fail(id, None, "again", T, &backoff).unwrap().1);
        let id = reserve(store, "b");
        run(store.plan_fail(id, None, "boom", T, &backoff).unwrap().1);
        let everything = FailedSelection {
            ids: &[],
            queue: Some("a"),
        };
        run(store.plan_retry_failed(&everything, T, 2).unwrap().1);
        let b = FailedSelection {
            ids: &[],
            queue: Some("b"),
        };
        run(store.plan_forget_failed(&b).unwrap().1);
        records
    }

    #[test]
    fn replaying_the_records_rebuilds_the_state_even_twice_over() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let live = open(dirs[0].path());
        let records = workload(&live);
        assert!(records.len() >= 9);
        assert_eq!(live.stats(T).unwrap().len(), 3);

        let replayed = open(dirs[1].path());
        for (lsn, body) in &records {
            replayed.replay(*lsn, body).unwrap();
        }
        assert_eq!(content(&replayed), content(&live));

        // Records replayed onto a tree that already holds them (a crash between the steps
        // of one record, or before the checkpoint recorded it) change nothing.
        let twice = open(dirs[2].path());
        for (lsn, body) in &records {
            twice.replay(*lsn, body).unwrap();
            twice.replay(*lsn, body).unwrap();
        }
        assert_eq!(content(&twice), content(&live));
        assert_eq!(twice.applied_lsn().unwrap(), records.last().unwrap().0);
    }

    #[test]
    fn a_record_that_is_not_steps_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(store.replay(1, &[0xff; 9]).is_err());
        assert_eq!(store.applied_lsn().unwrap(), 0);
        // The test helpers run the same plans.
        let id = store
            .push(
                NewJob {
                    queue: "q",
                    payload: b"x",
                    available_at_ms: T,
                    max_tries: 1,
                },
                T,
            )
            .unwrap();
        assert!(id > 0);
        assert_eq!(store.applied_lsn().unwrap(), 1);
    }
}
