//! One transaction's view of the trees, and the steps transitions share.

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};

use super::records::{self, FailedRecord, JobRecord, JobState, QueueCounts};
use super::{StoreError, keys};

pub(super) type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

pub(super) fn abort<T>(error: impl Into<StoreError>) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error.into()))
}

/// The trees as one transaction sees them.
pub(super) struct Tx<'a> {
    pub(super) jobs: &'a TransactionalTree,
    pub(super) payloads: &'a TransactionalTree,
    pub(super) ready: &'a TransactionalTree,
    pub(super) reserved: &'a TransactionalTree,
    pub(super) failed: &'a TransactionalTree,
    pub(super) counters: &'a TransactionalTree,
    pub(super) meta: &'a TransactionalTree,
}

impl Tx<'_> {
    pub(super) fn job(&self, id: u64) -> TxResult<Option<JobRecord>> {
        match self.jobs.get(keys::id_key(id))? {
            Some(bytes) => match records::decode("job", &bytes) {
                Ok(job) => Ok(Some(job)),
                Err(e) => abort(e),
            },
            None => Ok(None),
        }
    }

    pub(super) fn put_job(&self, id: u64, job: &JobRecord) -> TxResult<()> {
        match records::encode("job", job) {
            Ok(bytes) => {
                self.jobs.insert(keys::id_key(id), bytes)?;
                Ok(())
            }
            Err(e) => abort(e),
        }
    }

    pub(super) fn count(&self, queue: &str, change: impl FnOnce(&mut QueueCounts)) -> TxResult<()> {
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

    pub(super) fn wait(&self, id: u64, job: &mut JobRecord, available_at_ms: u64) -> TxResult<()> {
        job.state = JobState::Waiting { available_at_ms };
        self.put_job(id, job)?;
        self.ready
            .insert(keys::ready_key(&job.queue, available_at_ms, id), &[][..])?;
        Ok(())
    }

    /// Moves a reserved job (its `reserved` entry already removed) to the failed list.
    pub(super) fn fail_for_good(
        &self,
        id: u64,
        job: &JobRecord,
        error: &str,
        now_ms: u64,
    ) -> TxResult<()> {
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
