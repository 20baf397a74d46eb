//! The queue's operations as the RPCs and the reaper use them: the store behind one lock,
//! durability through the log, and waits for jobs.
//!
//! Mutations run under one `std` mutex (they are short, never await, and never sync): a
//! durable operation is planned, numbered, applied and appended to the log under the lock,
//! in log order, and waited for outside it, so a batch of concurrent pushes shares one
//! `fdatasync` (see [`crate::log`]).
//!
//! An engine serves one tenure of the tree (see [`crate::tenure`]). Its end switch, pulled
//! when the tenure ends (release or shutdown), ends the Reserve calls waiting at once.
//! [`Engine::close`] then takes the store under the lock before it stops the log's writer:
//! an operation either wrote and appended its record before (the writer's last sync makes
//! it durable and answers it) or finds the store gone and fails with
//! [`EngineError::ShuttingDown`] without any effect: the close leaves no call half done.
//!
//! Durability per operation: Push, Ack, Fail, RetryFailed and ForgetFailed answer after
//! their log record is on the disk (written and `fdatasync`ed, see [`crate::log`]), and a
//! job is handed out only once the record that made it ready is (see [`hidden`]), so a job
//! whose push then fails to sync never runs. Reserve and the reaper's moves are not logged
//! (sled's background flusher writes them within half a second): losing one in a crash
//! only hands a job out again, which an at-least-once queue allows.

mod hidden;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use securely_core::shutdown::Shutdown;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::log::{AppendError, LogHandle, Lsn, OnDurable, PendingAppend, Writer};
use crate::store::{
    FailOutcome, FailedChange, FailedList, FailedSelection, NewJob, QueueStats, Redo, Reservation,
    ReservedJob, Store, StoreError, redo,
};
use crate::wakeups::Wakeups;
use hidden::Hidden;

/// Expired reservations handled per lock acquisition.
pub const REAP_BATCH: usize = 512;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write could not be made durable.
    #[error("the write could not be made durable: {0}")]
    Log(#[from] AppendError),
    /// Nothing to reserve within the wait.
    #[error("queue {0} is empty")]
    Empty(String),
    /// The tenure is ending (hand-over or shutdown): nothing was done.
    #[error("queued is not serving (handing over or shutting down)")]
    ShuttingDown,
}

/// The current time as Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the lock guards.
#[derive(Debug)]
struct State {
    /// `None` once closed.
    store: Option<Store>,
    /// When the reaper next wakes, Unix ms (`u64::MAX`: no reservation pending).
    next_reap_at_ms: u64,
    /// The store's clock.
    clock: Clock,
    /// Jobs whose write is not durable yet.
    hidden: Hidden,
}

impl State {
    /// Now, on the store's clock.
    fn now_ms(&mut self) -> u64 {
        self.clock.now_ms()
    }
}

/// The store's clock: the wall clock read once at start, advanced by the monotonic clock.
/// It never goes back, so jobs pushed one after the other keep their order, and a step of
/// the wall clock while running neither freezes expiries nor fires them early.
#[derive(Debug)]
struct Clock {
    wall_at_start_ms: u64,
    started: std::time::Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall_at_start_ms: now_ms(),
            started: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_at_start_ms.saturating_add(elapsed)
    }
}

/// What a write made ready: the jobs to hide until it is durable, and the queues whose
/// waiting Reserve calls to wake then.
#[derive(Debug, Default)]
struct Readied {
    ids: Vec<u64>,
    queues: Vec<String>,
    /// Wake one waiting call (one job was pushed) rather than all of them.
    wake_one: bool,
}

impl Readied {
    /// Nothing made ready.
    fn none() -> Self {
        Self::default()
    }

    /// The job `id`, pushed onto `queue`.
    fn pushed(id: u64, queue: &str) -> Self {
        Self {
            ids: vec![id],
            queues: vec![queue.to_string()],
            wake_one: true,
        }
    }

    /// Jobs back on their queues (a retry): their queues' waiting calls all look again.
    fn moved(ids: Vec<u64>, queues: impl IntoIterator<Item = String>) -> Self {
        Self {
            ids,
            queues: queues.into_iter().collect(),
            wake_one: false,
        }
    }

    /// The wake-up to run once the write is durable, if anyone is to be woken.
    fn wake(&self, wakeups: &Arc<Wakeups>) -> Option<OnDurable> {
        if self.queues.is_empty() {
            return None;
        }
        let (wakeups, queues, one) = (wakeups.clone(), self.queues.clone(), self.wake_one);
        Some(Box::new(move || {
            for queue in &queues {
                if one {
                    wakeups.wake_one(queue);
                } else {
                    wakeups.wake(queue);
                }
            }
        }))
    }
}

/// The result of one reaper pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapPass {
    /// More expired reservations wait: run another pass at once.
    pub more: bool,
    /// The earliest remaining deadline, Unix ms.
    pub next_deadline_ms: Option<u64>,
}

/// The queue's shared state.
#[derive(Debug)]
pub struct Engine {
    state: Mutex<State>,
    log: LogHandle,
    wakeups: Arc<Wakeups>,
    reaper_wake: Notify,
    backoff: Backoff,
    end: Shutdown,
}

impl Engine {
    /// An engine over `store`, logging through `log`; Reserve waits end when `end` is
    /// pulled.
    pub fn new(store: Store, log: LogHandle, backoff: Backoff, end: Shutdown) -> Self {
        Self {
            state: Mutex::new(State {
                store: Some(store),
                next_reap_at_ms: 0,
                clock: Clock::start(),
                hidden: Hidden::default(),
            }),
            log,
            wakeups: Arc::default(),
            reaper_wake: Notify::new(),
            backoff,
            end,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the store (under the lock) with the store's clock.
    fn with_store<T>(
        &self,
        f: impl FnOnce(&Store, u64) -> Result<T, StoreError>,
    ) -> Result<T, EngineError> {
        let mut state = self.state();
        let now = state.now_ms();
        let store = state.store.as_ref().ok_or(EngineError::ShuttingDown)?;
        Ok(f(store, now)?)
    }

    /// Runs the durable operation `plan` (under the lock): plans its steps, applies them
    /// and appends them to the log as the next record before the lock is let go, so that
    /// records are in the order of their effects and [`Engine::close`] cannot come in
    /// between. The jobs it made ready stay hidden until the record is on the disk, and
    /// their queues are woken then.
    fn write<T>(
        &self,
        plan: impl FnOnce(&Store, u64) -> Result<(T, Readied, Vec<Redo>), StoreError>,
    ) -> Result<(T, PendingAppend), EngineError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let now = state.clock.now_ms();
        let store = state.store.as_ref().ok_or(EngineError::ShuttingDown)?;
        let (value, readied, steps) = plan(store, now)?;
        let body = redo::encode(&steps).map_err(StoreError::from)?;
        let lsn = self.log.next_lsn();
        store.apply(lsn, &steps)?;
        match self.log.append(lsn, body, readied.wake(&self.wakeups)) {
            Ok(append) => {
                // Forget what is durable by now, so that the hidden set stays as small as
                // the writes in flight even when nobody reserves.
                state.hidden.show_up_to(self.log.durable());
                state.hidden.hide(&readied.ids, append.lsn());
                Ok((value, append))
            }
            Err(e) => {
                // Never durable in this tenure: never shown.
                state.hidden.hide(&readied.ids, Lsn::MAX);
                Err(e.into())
            }
        }
    }

    /// Enqueues a job; returns its id once it is durable.
    pub async fn push(
        &self,
        queue: &str,
        payload: &[u8],
        delay_ms: u64,
        max_tries: u32,
    ) -> Result<u64, EngineError> {
        let (id, commit) = self.write(|store, now| {
            let job = NewJob {
                queue,
                payload,
                available_at_ms: now.saturating_add(delay_ms),
                max_tries,
            };
            let (id, steps) = store.plan_push(job, now)?;
            Ok((id, Readied::pushed(id, queue), steps))
        })?;
        commit.wait().await?;
        Ok(id)
    }

    /// Reserves the oldest available job of the first of `queues` (in priority order)
    /// that has one, for `timeout_ms`, waiting up to `wait` for one to become available.
    pub async fn reserve(
        &self,
        queues: &[String],
        timeout_ms: u64,
        wait: Duration,
    ) -> Result<ReservedJob, EngineError> {
        let give_up = Instant::now() + wait;
        let empty = || EngineError::Empty(queues.join(","));
        if wait.is_zero() {
            return match self.try_reserve(queues, timeout_ms)? {
                Reservation::Reserved(job) => Ok(job),
                Reservation::Empty { .. } => Err(empty()),
            };
        }
        let subscription = self.wakeups.subscribe(queues);
        loop {
            let next_available = match self.try_reserve(queues, timeout_ms)? {
                Reservation::Reserved(job) => {
                    subscription.pass_on(&job.queue);
                    return Ok(job);
                }
                Reservation::Empty {
                    next_available_at_ms,
                } => next_available_at_ms,
            };
            let now = Instant::now();
            if now >= give_up {
                return Err(empty());
            }
            let wake_at = match next_available {
                // One extra millisecond: the job is available once the clock has passed it.
                Some(at_ms) => {
                    let until = Duration::from_millis(at_ms.saturating_sub(now_ms()) + 1);
                    give_up.min(now + until)
                }
                None => give_up,
            };
            tokio::select! {
                () = subscription.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
                _ = self.end.wait() => return Err(EngineError::ShuttingDown),
            }
        }
    }

    /// Reserves from the first of `queues` that has a job available now; else tells when
    /// the earliest delayed job of any of them becomes available.
    fn try_reserve(&self, queues: &[String], timeout_ms: u64) -> Result<Reservation, EngineError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let now = state.clock.now_ms();
        state.hidden.show_up_to(self.log.durable());
        let store = state.store.as_ref().ok_or(EngineError::ShuttingDown)?;
        let hidden = &state.hidden;
        let mut earliest: Option<u64> = None;
        for queue in queues {
            match store.reserve(queue, now, timeout_ms, |id| hidden.contains(id))? {
                Reservation::Reserved(job) => {
                    let until_ms = job.reserved_until_ms;
                    self.plan_reap_by(state, until_ms);
                    return Ok(Reservation::Reserved(job));
                }
                Reservation::Empty {
                    next_available_at_ms,
                } => {
                    earliest = match (earliest, next_available_at_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        Ok(Reservation::Empty {
            next_available_at_ms: earliest,
        })
    }

    /// Removes a reserved job; answers once that is durable.
    pub async fn ack(&self, id: u64, attempt: Option<u32>) -> Result<(), EngineError> {
        let ((), commit) =
            self.write(|store, _| Ok(((), Readied::none(), store.plan_ack(id, attempt)?)))?;
        Ok(commit.wait().await?)
    }

    /// Records a failed attempt; answers once that is durable.
    pub async fn fail(
        &self,
        id: u64,
        attempt: Option<u32>,
        error: &str,
    ) -> Result<FailOutcome, EngineError> {
        let (outcome, commit) = self.write(|store, now| {
            let (outcome, steps) = store.plan_fail(id, attempt, error, now, &self.backoff)?;
            let readied = match &outcome {
                FailOutcome::Retry { queue, .. } => Readied::moved(vec![id], [queue.clone()]),
                FailOutcome::Failed => Readied::none(),
            };
            Ok((outcome, readied, steps))
        })?;
        commit.wait().await?;
        Ok(outcome)
    }

    /// Puts a reserved job back on its queue after `delay_ms`, recording no error;
    /// answers, with when it is available again, once that is durable.
    pub async fn release(
        &self,
        id: u64,
        attempt: Option<u32>,
        delay_ms: u64,
    ) -> Result<u64, EngineError> {
        let (at_ms, commit) = self.write(|store, now| {
            let at_ms = now.saturating_add(delay_ms);
            let (queue, steps) = store.plan_release(id, attempt, at_ms)?;
            Ok((at_ms, Readied::moved(vec![id], [queue]), steps))
        })?;
        commit.wait().await?;
        Ok(at_ms)
    }

    /// Extends a reservation to `timeout_ms` from now; returns when it now expires.
    pub fn touch(
        &self,
        id: u64,
        attempt: Option<u32>,
        timeout_ms: u64,
    ) -> Result<u64, EngineError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let until_ms = state.clock.now_ms().saturating_add(timeout_ms);
        let store = state.store.as_ref().ok_or(EngineError::ShuttingDown)?;
        store.touch(id, attempt, until_ms)?;
        self.plan_reap_by(state, until_ms);
        Ok(until_ms)
    }

    /// Wakes the reaper if a reservation ending at `until_ms` comes before its plan.
    fn plan_reap_by(&self, state: &mut State, until_ms: u64) {
        if until_ms < state.next_reap_at_ms {
            state.next_reap_at_ms = until_ms;
            self.reaper_wake.notify_one();
        }
    }

    /// The failed list of `queue` (or all), up to about `max_bytes`.
    pub fn list_failed(
        &self,
        queue: Option<&str>,
        max_bytes: usize,
    ) -> Result<FailedList, EngineError> {
        self.with_store(|store, _| store.list_failed(queue, max_bytes))
    }

    /// Puts failed jobs back on their queues; answers once that is durable.
    pub async fn retry_failed(
        &self,
        which: &FailedSelection<'_>,
        max_tries: u32,
    ) -> Result<FailedChange, EngineError> {
        let (change, commit) = self.write(|store, now| {
            let (change, steps) = store.plan_retry_failed(which, now, max_tries)?;
            let readied = Readied::moved(change.ids.clone(), change.queues.iter().cloned());
            Ok((change, readied, steps))
        })?;
        commit.wait().await?;
        Ok(change)
    }

    /// Removes failed jobs for good; answers once that is durable.
    pub async fn forget_failed(
        &self,
        which: &FailedSelection<'_>,
    ) -> Result<FailedChange, EngineError> {
        let (change, commit) = self.write(|store, _| {
            let (change, steps) = store.plan_forget_failed(which)?;
            Ok((change, Readied::none(), steps))
        })?;
        commit.wait().await?;
        Ok(change)
    }

    /// Every queue's figures.
    pub fn stats(&self) -> Result<Vec<QueueStats>, EngineError> {
        self.with_store(|store, now| store.stats(now))
    }

    /// Handles reservations expired by now (at most [`REAP_BATCH`]) and tells when the
    /// next one expires.
    pub fn reap(&self) -> Result<ReapPass, EngineError> {
        let (reaped, next_deadline_ms) = {
            let mut state = self.state();
            let now = state.now_ms();
            let store = state.store.as_ref().ok_or(EngineError::ShuttingDown)?;
            let reaped = store.reap(now, REAP_BATCH)?;
            let next = store.next_deadline()?;
            state.next_reap_at_ms = next.unwrap_or(u64::MAX);
            (reaped, next)
        };
        for queue in &reaped.returned_to {
            self.wakeups.wake(queue);
        }
        if reaped.returned + reaped.failed > 0 {
            tracing::info!(
                returned = reaped.returned,
                failed = reaped.failed,
                "expired reservations handled"
            );
        }
        Ok(ReapPass {
            more: reaped.more,
            next_deadline_ms,
        })
    }

    /// Completes when a reservation may expire before the reaper's planned wake-up.
    pub async fn reaper_woken(&self) {
        self.reaper_wake.notified().await;
    }

    /// The last log record applied to the store (for checkpoints).
    pub fn applied_lsn(&self) -> Result<Lsn, EngineError> {
        self.with_store(|store, _| store.applied_lsn())
    }

    /// Closes the tree: takes the store (every later operation fails with
    /// [`EngineError::ShuttingDown`] before it does anything), stops the log's writer
    /// (whose last sync makes every record let through durable and answers it), then
    /// flushes and drops the store. With the reaper and the checkpoints stopped, no sled
    /// handle is left when this returns.
    pub async fn close(&self, writer: Writer) -> Result<(), StoreError> {
        let store = self.state().store.take();
        writer.stop().await;
        match store {
            Some(store) => store.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
