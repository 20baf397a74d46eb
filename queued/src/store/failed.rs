//! The failed list: listing, retrying and forgetting failed jobs.

use sled::IVec;

use super::records::{self, FailedRecord, JobRecord, JobState};
use super::{FailedChange, FailedJob, FailedList, FailedSelection, Redo, Store, StoreError, keys};

/// A failed job picked for a retry or forget, with its `failed` key.
type PickedFailed = (IVec, FailedRecord);

/// Bytes a listed failed job takes on the wire besides its payload, error and queue
/// name (field tags, lengths, the numbers), rounded up.
pub(super) const FAILED_JOB_OVERHEAD: usize = 64;
/// Most failed jobs listed in one reply.
const MAX_LISTED_FAILED: usize = 10_000;

impl Store {
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

    /// Plans putting the failed jobs `which` picks back on their queues, available at
    /// `now_ms`, as new jobs with `max_tries` attempts (ids and payloads kept).
    pub fn plan_retry_failed(
        &self,
        which: &FailedSelection<'_>,
        now_ms: u64,
        max_tries: u32,
    ) -> Result<(FailedChange, Vec<Redo>), StoreError> {
        let (picked, missing) = self.select_failed(which)?;
        let mut change = FailedChange {
            missing,
            ..FailedChange::default()
        };
        let mut steps = Vec::with_capacity(picked.len());
        for (_, failed) in picked {
            let record = JobRecord {
                queue: failed.queue.clone(),
                max_tries,
                attempts: 0,
                created_at_ms: now_ms,
                state: JobState::Waiting {
                    available_at_ms: now_ms,
                },
            };
            steps.push(Redo::Moved {
                id: failed.id,
                record,
            });
            change.ids.push(failed.id);
            change.queues.insert(failed.queue);
        }
        Ok((change, steps))
    }

    /// Plans removing the failed jobs `which` picks, payloads included.
    pub fn plan_forget_failed(
        &self,
        which: &FailedSelection<'_>,
    ) -> Result<(FailedChange, Vec<Redo>), StoreError> {
        let (picked, missing) = self.select_failed(which)?;
        let mut change = FailedChange {
            missing,
            ..FailedChange::default()
        };
        let mut steps = Vec::with_capacity(picked.len());
        for (_, failed) in picked {
            steps.push(Redo::Forgotten {
                queue: failed.queue.clone(),
                id: failed.id,
            });
            change.ids.push(failed.id);
            change.queues.insert(failed.queue);
        }
        Ok((change, steps))
    }
}
