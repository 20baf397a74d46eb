//! The hand-over of a daemon from its running instance (old) to a new one, over their
//! notification sockets (the protocol is described in
//! [`securely_core::readiness`]). Phases, each bounded:
//!
//! 1. **spawn** the new instance with the same sockets;
//! 2. **prepare**: wait for its `PREPARED=1` (it has everything but the sled tree);
//! 3. **release**: tell old to close its tree (`RELEASE`), wait for `RELEASED=1`; old keeps
//!    serving what needs no tree. An old instance that does not answer in
//!    [`RELEASE_TIMEOUT`] is killed (the tree is free once it is gone);
//! 4. **acquire**: tell new to open the tree (`ACQUIRE`), wait for `READY=1`;
//! 5. done: the caller retires old (SIGTERM, drain).
//!
//! A failure in phases 1-2 leaves old untouched. A failure in phase 4 kills new and tells
//! old to take its tree back (`RESUME`) and serve again: a failed hand-over never takes
//! the service down, unless old cannot resume either. [`START_TIMEOUT`] bounds phases 1-4.
//! A stop of the stack at any point abandons the hand-over: new is stopped, and the
//! caller stops old.

use std::sync::Arc;
use std::time::Duration;

use securely_core::readiness::{Command, Notice};
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::time::Instant;

use crate::child::{self, Instance};
use crate::events::SlotRecorder;
use crate::spawn;
use crate::spec::SlotSpec;
use crate::stopping;

/// How long a new instance may take from start to serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an old instance may take to close its tree.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an old instance may take to serve again after a failed hand-over.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a hand-over did not complete.
#[derive(Debug)]
pub enum HandoverError {
    /// The stack stops: the new instance is gone, the old one is the caller's to stop.
    Stop(ShutdownKind),
    /// The new instance failed.
    Failed {
        /// Why, in one line.
        reason: String,
        /// The old instance is gone too (it could not resume, or there was none).
        old_lost: bool,
    },
}

/// Why waiting for a notice ended without it.
enum Missed {
    Failed(String),
    Stop(ShutdownKind),
}

/// Runs the hand-over from `old` (none after a crash or at first start) to a new
/// instance of `spec`, which is returned serving.
pub async fn run(
    spec: &SlotSpec,
    old: Option<&Instance>,
    status: &Arc<SlotRecorder>,
    shutdown: &Shutdown,
) -> Result<Instance, HandoverError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let name = spec.name;

    // Phase: spawn.
    let fds = spec.sockets.fds();
    let new = spawn::spawn(&spec.binary, &fds, &spec.settings_yaml)
        .map_err(|e| HandoverError::Failed {
            reason: format!("{e:#}"),
            old_lost: old.is_none(),
        })?
        .reporting_to(status.clone());
    tracing::info!(daemon = name, pid = new.pid, "started");
    if old.is_none() {
        status.send_modify(|s| s.pid = new.pid);
    }

    // Phase: prepare.
    if let Err(missed) = await_notice(&new, Notice::Prepared, deadline, status, shutdown).await {
        return Err(abandon(&new, old, missed, false, status, shutdown).await);
    }
    status.step("prepared", new.pid, String::new());

    // Phase: release.
    let mut released = false;
    if let Some(old) = old {
        released = release(name, old).await;
        if released {
            status.step("released", old.pid, String::new());
        }
    }

    // Phase: acquire.
    if !new.command(Command::Acquire).await {
        tracing::debug!(
            daemon = name,
            "the new instance closed its notification socket"
        );
    }
    match await_notice(&new, Notice::Ready, deadline, status, shutdown).await {
        Ok(()) => Ok(new),
        Err(missed) => Err(abandon(&new, old, missed, released, status, shutdown).await),
    }
}

/// Tells old to close its tree and waits until it has (or is gone). Returns whether old
/// is still there, released.
pub async fn release(name: &str, old: &Instance) -> bool {
    let started = Instant::now();
    if !old.command(Command::Release).await {
        tracing::warn!(
            daemon = name,
            pid = old.pid,
            "old instance no longer listens; waiting for it to exit"
        );
    }
    let outcome = tokio::time::timeout(RELEASE_TIMEOUT, async {
        loop {
            tokio::select! {
                notice = old.next_notice() => match notice {
                    Some(Notice::Released) => return true,
                    Some(_) => {}
                    // Closed: it is exiting; the tree is free once it is gone.
                    None => {
                        let _ = old.wait().await;
                        return false;
                    }
                },
                _ = old.wait() => return false,
            }
        }
    })
    .await;
    match outcome {
        Ok(true) => {
            tracing::info!(
                daemon = name,
                pid = old.pid,
                took_ms = started.elapsed().as_millis() as u64,
                "old instance released its tree"
            );
            true
        }
        Ok(false) => {
            tracing::warn!(
                daemon = name,
                pid = old.pid,
                "old instance exited instead of releasing its tree"
            );
            false
        }
        Err(_) => {
            tracing::warn!(
                daemon = name,
                pid = old.pid,
                "old instance did not release its tree within {}s; killing it",
                RELEASE_TIMEOUT.as_secs()
            );
            let _ = old.kill().await;
            false
        }
    }
}

/// Gives up on `new` after `missed`: stops it and, when old released its tree, has old
/// take it back.
async fn abandon(
    new: &Instance,
    old: Option<&Instance>,
    missed: Missed,
    released: bool,
    status: &SlotRecorder,
    shutdown: &Shutdown,
) -> HandoverError {
    let reason = match missed {
        Missed::Stop(kind) => {
            stopping::stop_fast(new).await;
            return HandoverError::Stop(kind);
        }
        Missed::Failed(reason) => reason,
    };
    let _ = new.kill().await;
    let Some(old) = old else {
        return HandoverError::Failed {
            reason,
            old_lost: true,
        };
    };
    if old.try_reap() {
        return HandoverError::Failed {
            reason: format!("{reason}; the old instance is gone too"),
            old_lost: true,
        };
    }
    if !released {
        return HandoverError::Failed {
            reason,
            old_lost: false,
        };
    }
    // Phase: resume.
    tracing::warn!(
        pid = old.pid,
        "hand-over failed ({reason}); the old instance resumes"
    );
    old.command(Command::Resume).await;
    let resumed = await_notice(
        old,
        Notice::Ready,
        Instant::now() + RESUME_TIMEOUT,
        status,
        shutdown,
    )
    .await;
    match resumed {
        Ok(()) => HandoverError::Failed {
            reason,
            old_lost: false,
        },
        Err(Missed::Stop(kind)) => HandoverError::Stop(kind),
        Err(Missed::Failed(why)) => {
            let _ = old.kill().await;
            HandoverError::Failed {
                reason: format!("{reason}; the old instance could not resume: {why}"),
                old_lost: true,
            }
        }
    }
}

/// Waits for `wanted` from `instance`, noting its `STATUS=` lines; fails when it exits,
/// at `deadline`, or when the stack stops.
async fn await_notice(
    instance: &Instance,
    wanted: Notice,
    deadline: Instant,
    status: &SlotRecorder,
    shutdown: &Shutdown,
) -> Result<(), Missed> {
    let mut notices_open = true;
    let what = match wanted {
        Notice::Prepared => "prepared",
        _ => "ready",
    };
    loop {
        tokio::select! {
            notice = instance.next_notice(), if notices_open => match notice {
                Some(notice) if notice == wanted => return Ok(()),
                Some(Notice::Status(text)) => status.send_modify(|s| s.note = text),
                Some(_) => {}
                None => notices_open = false,
            },
            exit = instance.wait() => {
                return Err(Missed::Failed(format!(
                    "exited before {what}: {}", child::describe_exit(exit)
                )));
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(Missed::Failed(format!(
                    "not {what} within {}s; killed", START_TIMEOUT.as_secs()
                )));
            }
            kind = shutdown.wait() => return Err(Missed::Stop(kind)),
        }
    }
}
