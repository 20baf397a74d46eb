//! What starts an upgrade: SIGQUIT, SIGHUP or the control service's `Reload`, each sent
//! to the serve loop as an [`UpgradeTrigger`] that already holds the right to run it (see
//! [`crate::operation`]): a request while another operation runs is refused at once.

use anyhow::Context;
use securely_core::shutdown::ShutdownKind;
use tokio::sync::{mpsc, oneshot};

use crate::operation::{Operation, OperationGuard, Operations};

/// Upgrade requests that may wait for the serve loop: each holds the one operation, so
/// never more than one.
pub const PENDING: usize = 1;

/// A request to upgrade, answered with its id once the check passed.
#[derive(Debug)]
pub struct UpgradeTrigger {
    /// Where the answer goes, until it is answered (never for a signal).
    reply: Option<oneshot::Sender<Result<u64, Refused>>>,
    /// Whether a signal asked.
    signal: bool,
    /// The right to run the upgrade, held until it is over in this image.
    _guard: OperationGuard,
}

impl UpgradeTrigger {
    /// A request from a signal: nobody waits for the answer.
    pub fn signal(guard: OperationGuard) -> Self {
        Self {
            reply: None,
            signal: true,
            _guard: guard,
        }
    }

    /// A request from a call, answered on `reply`.
    pub fn call(reply: oneshot::Sender<Result<u64, Refused>>, guard: OperationGuard) -> Self {
        Self {
            reply: Some(reply),
            signal: false,
            _guard: guard,
        }
    }

    /// Whether it came from a signal (pingora's `-u` path answers only signals).
    pub fn is_signal(&self) -> bool {
        self.signal
    }

    /// Answers the request, if it came with a reply (once).
    pub fn answer(&mut self, result: Result<u64, Refused>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// Why an upgrade was refused, with nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A stop was requested before it could run.
    #[error("the stack is stopping ({0:?})")]
    Stopping(ShutdownKind),
    /// The installed binaries or the settings file failed the check.
    #[error(transparent)]
    Check(#[from] CheckFailed),
}

/// Why the check of an upgrade failed: the first binary that did, and what it said.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    /// It did not answer in time.
    #[error("{binary} did not answer within {seconds}s")]
    Timeout {
        /// The binary's path.
        binary: String,
        /// The time it had.
        seconds: u64,
    },
    /// It could not be started.
    #[error("cannot run {binary}: {source}")]
    CannotRun {
        /// The binary's path.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// It answered with a failure.
    #[error("{binary} {args} failed ({exit}): {said}")]
    Failed {
        /// The binary's path.
        binary: String,
        /// The arguments it was given.
        args: String,
        /// How it ended.
        exit: String,
        /// Its standard error, one line.
        said: String,
    },
    /// The task running it failed.
    #[error("the check failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// SIGQUIT (pingora's graceful upgrade) and SIGHUP (nginx's reload) both upgrade the
/// stack in place: the binaries and the settings file are read again. One that arrives
/// while a restart or an upgrade runs is ignored, with the reason logged.
pub fn watch_signals(
    operations: Operations,
    trigger: mpsc::Sender<UpgradeTrigger>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, name) in [
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut signals = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        let (operations, trigger) = (operations.clone(), trigger.clone());
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                let guard = match operations.begin(Operation::Upgrade) {
                    Ok(guard) => guard,
                    Err(busy) => {
                        tracing::warn!("{name} ignored: {busy}");
                        continue;
                    }
                };
                tracing::info!("{name}: upgrading the stack");
                let request = UpgradeTrigger::signal(guard);
                if trigger.try_send(request).is_err() {
                    tracing::warn!("{name} ignored: the supervisor is stopping");
                }
            }
        });
    }
    Ok(())
}
