//! The reaper: returns expired reservations to their queue, or moves them to the failed
//! list when they were the job's last attempt (Laravel's "max attempts exceeded").
//!
//! It sleeps until the earliest reservation deadline; a Reserve whose deadline comes
//! earlier wakes it to re-plan. It never polls an empty reserved index.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineError, now_ms};

/// Longest sleep between passes, so a wall clock that jumps is noticed.
pub const MAX_REAPER_SLEEP: Duration = Duration::from_secs(30);
/// Pause after a failed pass before the next attempt.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The running reaper.
#[derive(Debug)]
pub struct Reaper {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Reaper {
    /// Starts the reaper on the current runtime.
    pub fn start(engine: Arc<Engine>) -> Self {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(engine, stop.clone()));
        Self { stop, task }
    }

    /// Stops the reaper and waits until it has let go of the engine.
    pub async fn stop(self) {
        self.stop.notify_one();
        if self.task.await.is_err() {
            tracing::error!("the reaper task panicked");
        }
    }
}

async fn run(engine: Arc<Engine>, stop: Arc<Notify>) {
    loop {
        let sleep = match engine.reap() {
            Ok(pass) if pass.more => Duration::ZERO,
            Ok(pass) => pass
                .next_deadline_ms
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(MAX_REAPER_SLEEP)
                .min(MAX_REAPER_SLEEP),
            Err(EngineError::ShuttingDown) => return,
            Err(e) => {
                tracing::error!("reaper: {e}");
                RETRY_AFTER_ERROR
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = engine.reaper_woken() => {}
            () = stop.notified() => return,
        }
    }
}
