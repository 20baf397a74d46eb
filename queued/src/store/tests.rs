//! Transitions of the store, on a real sled tree in a temp dir, with explicit clocks.

use super::failed::FAILED_JOB_OVERHEAD;
use super::*;

/// A fixed "now" for the tests, Unix ms.
const T: u64 = 1_700_000_000_000;

fn open() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    (Store::open(db).unwrap(), dir)
}

/// The durable operations as the engine runs them: planned, then applied as the next
/// log record.
pub(super) trait Ops {
    fn push(&self, job: NewJob<'_>, now_ms: u64) -> Result<u64, StoreError>;
    fn ack(&self, id: u64, attempt: Option<u32>) -> Result<(), StoreError>;
    fn fail(
        &self,
        id: u64,
        attempt: Option<u32>,
        error: &str,
        now_ms: u64,
        backoff: &Backoff,
    ) -> Result<FailOutcome, StoreError>;
    fn retry_failed(
        &self,
        which: &FailedSelection<'_>,
        now_ms: u64,
        max_tries: u32,
    ) -> Result<FailedChange, StoreError>;
    fn forget_failed(&self, which: &FailedSelection<'_>) -> Result<FailedChange, StoreError>;
}

impl Store {
    fn apply_next(&self, steps: &[Redo]) -> Result<(), StoreError> {
        self.apply(self.applied_lsn()? + 1, steps)
    }
}

impl Ops for Store {
    fn push(&self, job: NewJob<'_>, now_ms: u64) -> Result<u64, StoreError> {
        let (id, steps) = self.plan_push(job, now_ms)?;
        self.apply_next(&steps)?;
        Ok(id)
    }

    fn ack(&self, id: u64, attempt: Option<u32>) -> Result<(), StoreError> {
        self.apply_next(&self.plan_ack(id, attempt)?)
    }

    fn fail(
        &self,
        id: u64,
        attempt: Option<u32>,
        error: &str,
        now_ms: u64,
        backoff: &Backoff,
    ) -> Result<FailOutcome, StoreError> {
        let (outcome, steps) = self.plan_fail(id, attempt, error, now_ms, backoff)?;
        self.apply_next(&steps)?;
        Ok(outcome)
    }

    fn retry_failed(
        &self,
        which: &FailedSelection<'_>,
        now_ms: u64,
        max_tries: u32,
    ) -> Result<FailedChange, StoreError> {
        let (change, steps) = self.plan_retry_failed(which, now_ms, max_tries)?;
        self.apply_next(&steps)?;
        Ok(change)
    }

    fn forget_failed(&self, which: &FailedSelection<'_>) -> Result<FailedChange, StoreError> {
        let (change, steps) = self.plan_forget_failed(which)?;
        self.apply_next(&steps)?;
        Ok(change)
    }
}

fn push(store: &Store, queue: &str, payload: &[u8], available_at_ms: u64, max_tries: u32) -> u64 {
    store
        .push(
            NewJob {
                queue,
                payload,
                available_at_ms,
                max_tries,
            },
            T,
        )
        .unwrap()
}

fn reserve(store: &Store, queue: &str, now_ms: u64) -> ReservedJob {
    match store.reserve(queue, now_ms, 1_000, |_| false).unwrap() {
        Reservation::Reserved(job) => job,
        Reservation::Empty { .. } => panic!("queue {queue} is empty at {now_ms}"),
    }
}

fn stats(store: &Store, queue: &str, now_ms: u64) -> QueueStats {
    store
        .stats(now_ms)
        .unwrap()
        .into_iter()
        .find(|s| s.queue == queue)
        .unwrap()
}

#[test]
fn push_reserve_ack_removes_the_job() {
    let (store, _dir) = open();
    let id = push(&store, "q", b"hello", T, 3);
    assert!(id > 0);
    let job = reserve(&store, "q", T);
    assert_eq!(
        job,
        ReservedJob {
            id,
            queue: "q".into(),
            payload: b"hello".to_vec(),
            attempt: 1,
            max_tries: 3,
            created_at_ms: T,
            reserved_until_ms: T + 1_000,
        }
    );
    assert_eq!(
        store.reserve("q", T, 1_000, |_| false).unwrap(),
        Reservation::Empty {
            next_available_at_ms: None
        }
    );
    store.ack(id, None).unwrap();
    assert!(matches!(store.ack(id, None), Err(StoreError::NotReserved(i)) if i == id));
    let s = stats(&store, "q", T);
    assert_eq!(
        (s.ready, s.delayed, s.reserved, s.failed, s.pushed_total),
        (0, 0, 0, 0, 1)
    );
    assert_eq!(store.next_deadline().unwrap(), None);
}

#[test]
fn jobs_come_out_in_push_order_and_queues_are_separate() {
    let (store, _dir) = open();
    let ids: Vec<u64> = (0..20u8).map(|i| push(&store, "q", &[i], T, 1)).collect();
    let other = push(&store, "q2", b"other", T, 1);
    let got: Vec<u64> = (0..20).map(|_| reserve(&store, "q", T).id).collect();
    assert_eq!(got, ids);
    assert_eq!(reserve(&store, "q2", T).id, other);
}

#[test]
fn hidden_jobs_are_passed_over_and_left_ready() {
    let (store, _dir) = open();
    let first = push(&store, "q", b"first", T, 1);
    let second = push(&store, "q", b"second", T, 1);
    let later = push(&store, "q", b"later", T + 5_000, 1);
    let only_first = |id| id == first;
    let got = store.reserve("q", T, 1_000, only_first).unwrap();
    assert!(matches!(got, Reservation::Reserved(ref job) if job.id == second));
    // Every available job hidden: empty, pointing at the earliest job that is not.
    assert_eq!(
        store.reserve("q", T, 1_000, |id| id == first).unwrap(),
        Reservation::Empty {
            next_available_at_ms: Some(T + 5_000)
        }
    );
    assert_eq!(
        store
            .reserve("q", T, 1_000, |id| id == first || id == later)
            .unwrap(),
        Reservation::Empty {
            next_available_at_ms: None
        }
    );
    assert_eq!(reserve(&store, "q", T).id, first);
}

#[test]
fn a_delayed_job_waits_for_its_time_behind_available_ones() {
    let (store, _dir) = open();
    let late = push(&store, "q", b"late", T + 5_000, 1);
    assert_eq!(
        store.reserve("q", T, 1_000, |_| false).unwrap(),
        Reservation::Empty {
            next_available_at_ms: Some(T + 5_000)
        }
    );
    let s = stats(&store, "q", T);
    assert_eq!((s.ready, s.delayed), (0, 1));
    let now = push(&store, "q", b"now", T, 1);
    assert_eq!(reserve(&store, "q", T).id, now);
    assert_eq!(reserve(&store, "q", T + 5_000).id, late);
}

#[test]
fn an_expired_reservation_returns_with_its_attempt_counted() {
    let (store, _dir) = open();
    let id = push(&store, "q", b"x", T, 3);
    let first = reserve(&store, "q", T);
    assert_eq!(
        store.next_deadline().unwrap(),
        Some(first.reserved_until_ms)
    );
    // Not expired yet.
    assert_eq!(store.reap(T + 999, 10).unwrap(), Reaped::default());
    let reaped = store.reap(T + 1_000, 10).unwrap();
    assert_eq!(
        reaped,
        Reaped {
            returned_to: vec!["q".into()],
            returned: 1,
            failed: 0,
            more: false
        }
    );
    // The worker that lost the reservation can no longer ack it.
    assert!(matches!(
        store.ack(id, None),
        Err(StoreError::NotReserved(_))
    ));
    let second = reserve(&store, "q", T + 1_000);
    assert_eq!((second.id, second.attempt), (id, 2));
    // Once handed out again, the late worker's ack for attempt 1 is refused; the new
    // holder's ack for attempt 2 goes through.
    assert!(matches!(
        store.ack(id, Some(1)),
        Err(StoreError::StaleReservation {
            attempt: 1,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        store.fail(id, Some(1), "late", T + 1_000, &Backoff::new(1, 60)),
        Err(StoreError::StaleReservation { .. })
    ));
    store.ack(id, Some(2)).unwrap();
}

#[test]
fn a_reservation_expiring_on_the_last_attempt_fails_the_job() {
    let (store, _dir) = open();
    let id = push(&store, "q", b"x", T, 1);
    reserve(&store, "q", T);
    let reaped = store.reap(T + 2_000, 10).unwrap();
    assert_eq!((reaped.returned, reaped.failed), (0, 1));
    let failed = store.list_failed(Some("q"), usize::MAX).unwrap();
    assert_eq!(failed.jobs.len(), 1);
    assert_eq!(failed.jobs[0].record.id, id);
    assert_eq!(failed.jobs[0].record.attempts, 1);
    assert_eq!(failed.jobs[0].record.error, expired_error(1));
    assert_eq!(failed.jobs[0].payload, b"x");
    let s = stats(&store, "q", T + 2_000);
    assert_eq!((s.ready, s.reserved, s.failed), (0, 0, 1));
}

#[test]
fn reaping_goes_in_batches() {
    let (store, _dir) = open();
    for _ in 0..5 {
        push(&store, "q", b"x", T, 2);
        reserve(&store, "q", T);
    }
    let first = store.reap(T + 1_000, 3).unwrap();
    assert_eq!((first.returned, first.more), (3, true));
    let second = store.reap(T + 1_000, 3).unwrap();
    assert_eq!((second.returned, second.more), (2, false));
    assert_eq!(stats(&store, "q", T + 1_000).ready, 5);
}

#[test]
fn fail_retries_with_backoff_then_lands_in_the_failed_list() {
    let (store, _dir) = open();
    let backoff = Backoff::new(1, 60);
    let id = push(&store, "q", b"job", T, 3);

    reserve(&store, "q", T);
    assert_eq!(
        store.fail(id, None, "first", T, &backoff).unwrap(),
        FailOutcome::Retry {
            queue: "q".into(),
            at_ms: T + 1_000
        }
    );
    assert!(matches!(
        store.reserve("q", T, 1_000, |_| false).unwrap(),
        Reservation::Empty { .. }
    ));
    let second = reserve(&store, "q", T + 1_000);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        store.fail(id, None, "second", T + 1_000, &backoff).unwrap(),
        FailOutcome::Retry {
            queue: "q".into(),
            at_ms: T + 3_000
        }
    );
    let third = reserve(&store, "q", T + 3_000);
    assert_eq!(third.attempt, 3);
    assert_eq!(
        store.fail(id, None, "third", T + 3_000, &backoff).unwrap(),
        FailOutcome::Failed
    );
    assert!(matches!(
        store.fail(id, None, "again", T, &backoff),
        Err(StoreError::NotReserved(_))
    ));

    let all = store.list_failed(None, usize::MAX).unwrap();
    assert_eq!(all.omitted, 0);
    let record = &all.jobs[0].record;
    assert_eq!(
        (record.id, record.attempts, record.error.as_str()),
        (id, 3, "third")
    );
    assert_eq!(record.failed_at_ms, T + 3_000);
    assert!(
        store
            .list_failed(Some("other"), usize::MAX)
            .unwrap()
            .jobs
            .is_empty()
    );
}

#[test]
fn ack_and_fail_need_a_reservation() {
    let (store, _dir) = open();
    let backoff = Backoff::new(1, 60);
    let id = push(&store, "q", b"x", T, 1);
    assert!(matches!(
        store.ack(id, None),
        Err(StoreError::NotReserved(_))
    ));
    assert!(matches!(
        store.fail(id, None, "e", T, &backoff),
        Err(StoreError::NotReserved(_))
    ));
    assert!(matches!(
        store.ack(999_999, None),
        Err(StoreError::NotReserved(_))
    ));
}

#[test]
fn stats_count_every_state() {
    let (store, _dir) = open();
    let backoff = Backoff::new(0, 0);
    push(&store, "q", b"ready", T, 1);
    push(&store, "q", b"delayed", T + 60_000, 1);
    push(&store, "q", b"reserved", T, 1);
    push(&store, "q", b"failed", T, 1);
    push(&store, "other", b"x", T, 1);
    reserve(&store, "q", T);
    let doomed = reserve(&store, "q", T);
    store.fail(doomed.id, None, "boom", T, &backoff).unwrap();
    let s = stats(&store, "q", T);
    assert_eq!(
        (s.ready, s.delayed, s.reserved, s.failed, s.pushed_total),
        (1, 1, 1, 1, 4)
    );
    assert_eq!(stats(&store, "other", T).ready, 1);
    assert_eq!(store.stats(T).unwrap().len(), 2);
}

#[test]
fn the_failed_list_respects_its_size_limit() {
    let (store, _dir) = open();
    let backoff = Backoff::new(0, 0);
    for _ in 0..3 {
        push(&store, "q", &[0; 100], T, 1);
        let job = reserve(&store, "q", T);
        store.fail(job.id, None, "e", T, &backoff).unwrap();
    }
    // Each job counts its payload, error and queue name plus the wire overhead.
    let list = store
        .list_failed(None, 2 * (100 + 1 + 1 + FAILED_JOB_OVERHEAD) + 10)
        .unwrap();
    assert_eq!((list.jobs.len(), list.omitted), (2, 1));
    // At least one job, whatever the limit.
    assert_eq!(store.list_failed(None, 0).unwrap().jobs.len(), 1);
}

#[test]
fn everything_survives_a_reopen_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, reserved) = {
        let store = Store::open(sled::Config::new().path(dir.path()).open().unwrap()).unwrap();
        let first = push(&store, "q", b"one", T, 2);
        push(&store, "q", b"two", T, 2);
        let reserved = reserve(&store, "q", T);
        store.flush().unwrap();
        (first, reserved)
    };
    let store = Store::open(
        securely_core::store::open_tree(dir.path(), std::time::Duration::from_secs(2)).unwrap(),
    )
    .unwrap();
    assert_eq!(reserved.id, first);
    assert_eq!(
        store.next_deadline().unwrap(),
        Some(reserved.reserved_until_ms)
    );
    let s = stats(&store, "q", T);
    assert_eq!((s.ready, s.reserved, s.pushed_total), (1, 1, 2));
    let third = push(&store, "q", b"three", T, 2);
    assert!(third > first + 1);
}

#[test]
fn failed_jobs_can_be_retried_or_forgotten() {
    let (store, _dir) = open();
    let backoff = Backoff::new(0, 0);
    let mut failed = Vec::new();
    for (queue, payload) in [("a", &b"one"[..]), ("a", b"two"), ("b", b"three")] {
        push(&store, queue, payload, T, 1);
        let job = reserve(&store, queue, T);
        store.fail(job.id, None, "boom", T, &backoff).unwrap();
        failed.push(job.id);
    }
    assert_eq!(stats(&store, "a", T).failed, 2);

    // Retry one by id: back on its queue from attempt zero, same id and payload.
    let retried = store
        .retry_failed(
            &FailedSelection {
                ids: &[failed[0], 999],
                queue: None,
            },
            T,
            3,
        )
        .unwrap();
    assert_eq!((retried.ids.len(), retried.missing.clone()), (1, vec![999]));
    let again = reserve(&store, "a", T);
    assert_eq!((again.id, again.attempt), (failed[0], 1));
    assert_eq!(&again.payload[..], b"one");
    let a = stats(&store, "a", T);
    assert_eq!((a.failed, a.reserved), (1, 1));

    // Forget every failed job of queue b only, then everything left.
    let forgotten = store
        .forget_failed(&FailedSelection {
            ids: &[],
            queue: Some("b"),
        })
        .unwrap();
    assert_eq!(forgotten.ids.len(), 1);
    assert_eq!(stats(&store, "b", T).failed, 0);
    assert_eq!(store.list_failed(None, usize::MAX).unwrap().jobs.len(), 1);
    let rest = store
        .forget_failed(&FailedSelection {
            ids: &[],
            queue: None,
        })
        .unwrap();
    assert_eq!(rest.ids.len(), 1);
    assert!(store.list_failed(None, usize::MAX).unwrap().jobs.is_empty());
    assert_eq!(stats(&store, "a", T).failed, 0);
}
