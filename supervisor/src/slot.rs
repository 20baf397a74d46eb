//! One daemon under supervision: start it, wait for readiness, watch it, restart it with
//! backoff when it dies, stop it when the stack stops.
//!
//! Each slot runs as one task through named phases: **start** (spawn with the held
//! sockets), **await readiness** (bounded by [`START_TIMEOUT`]), **run** (until the
//! instance exits, a restart is requested or the stack stops), **backoff** (after a
//! failure), **stop**. Every phase watches the stack's [`Shutdown`], so a stop is never
//! lost or delayed, and a fast stop overrides a graceful one in progress.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use securely_core::readiness::Notice;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::backoff;
use crate::child::{self, Instance};
use crate::sockets::DaemonSockets;
use crate::state::{DaemonState, SlotStatus};

/// How long a new instance may take to report readiness.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an instance told to stop fast (SIGINT) gets before SIGKILL.
pub const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time after the grace period before a draining instance is killed.
pub const GRACE_MARGIN: Duration = Duration::from_secs(1);
/// Restart requests that may wait for a slot (more are answered "busy").
const COMMAND_QUEUE: usize = 8;

/// What a slot needs to start instances.
#[derive(Debug)]
pub struct SlotSpec {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    /// The daemon's executable.
    pub binary: std::path::PathBuf,
    /// The sockets handed to every instance.
    pub sockets: DaemonSockets,
    /// The daemon's sled tree (for status).
    pub tree: String,
    /// The resolved settings, as handed to the daemon.
    pub settings_yaml: Arc<String>,
    /// How long a draining instance may take.
    pub grace: Duration,
}

/// A restart request: answered with the new pid once it is ready, or the reason.
type RestartReply = oneshot::Sender<Result<u32, String>>;

/// The handle the rest of the supervisor holds on a slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    status: watch::Receiver<SlotStatus>,
    restarts: mpsc::Sender<RestartReply>,
}

impl Slot {
    /// Starts supervising `spec` in a new task, which ends once `shutdown` is pulled and
    /// the instance is gone.
    pub fn start(spec: SlotSpec, shutdown: Shutdown) -> (Self, JoinHandle<()>) {
        let initial = SlotStatus::new(
            spec.sockets.urls(),
            spec.tree.clone(),
            spec.sockets.grpc_path.display().to_string(),
        );
        let (status_tx, status) = watch::channel(initial);
        let (restarts_tx, restarts) = mpsc::channel(COMMAND_QUEUE);
        let name = spec.name;
        let supervision = Supervision {
            spec,
            status: status_tx,
            restarts,
            shutdown,
            waiting: Vec::new(),
        };
        let task = tokio::spawn(supervision.run());
        let slot = Self {
            name,
            status,
            restarts: restarts_tx,
        };
        (slot, task)
    }

    /// The slot's current status.
    pub fn status(&self) -> SlotStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<SlotStatus> {
        self.status.clone()
    }

    /// Replaces the running instance; returns the new pid once it is ready.
    pub async fn restart(&self) -> Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.restarts.try_send(tx).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("{} is busy with earlier restarts", self.name)
            }
            mpsc::error::TrySendError::Closed(_) => format!("{} is stopped", self.name),
        })?;
        rx.await.map_err(|_| format!("{} is stopped", self.name))?
    }
}

/// Why a phase was interrupted.
enum Interruption {
    /// A restart was requested.
    Restart(RestartReply),
    /// The stack stops.
    Stop(ShutdownKind),
}

/// How waiting on a running (or starting) instance ended.
enum Outcome {
    /// `READY=1` arrived (only while awaiting readiness).
    Ready,
    /// The instance exited, or never became ready.
    Failed(String),
    /// A restart or a stop.
    Interrupted(Interruption),
}

/// The task behind a [`Slot`].
struct Supervision {
    spec: SlotSpec,
    status: watch::Sender<SlotStatus>,
    restarts: mpsc::Receiver<RestartReply>,
    shutdown: Shutdown,
    /// Restart callers waiting for the next ready instance.
    waiting: Vec<RestartReply>,
}

impl Supervision {
    async fn run(mut self) {
        let mut first = true;
        loop {
            if let Some(kind) = self.shutdown.requested() {
                self.stopped(kind);
                return;
            }
            // Phase: start.
            if !first {
                self.status.send_modify(|s| s.restarts += 1);
            }
            first = false;
            self.status.send_modify(|s| s.enter(DaemonState::Starting));
            let fds = self.spec.sockets.fds();
            let (mut instance, notices) =
                match child::spawn(&self.spec.binary, &fds, &self.spec.settings_yaml) {
                    Ok(spawned) => spawned,
                    Err(e) => {
                        if self.fail_and_back_off(format!("{e:#}")).await.is_break() {
                            return;
                        }
                        continue;
                    }
                };
            tracing::info!(daemon = self.spec.name, pid = instance.pid, "started");
            self.status.send_modify(|s| s.pid = instance.pid);
            let mut notices = BufReader::new(notices).lines();

            // Phase: await readiness.
            match self.watch(&mut instance, &mut notices, true).await {
                Outcome::Ready => {}
                Outcome::Failed(reason) => {
                    if self.fail_and_back_off(reason).await.is_break() {
                        return;
                    }
                    continue;
                }
                Outcome::Interrupted(why) => {
                    if self.interrupt(why, &mut instance).await.is_break() {
                        return;
                    }
                    continue;
                }
            }
            let ready_at = Instant::now();
            tracing::info!(daemon = self.spec.name, pid = instance.pid, "ready");
            self.status.send_modify(|s| {
                s.enter(DaemonState::Ready);
                s.ready_since = Some(ready_at);
            });
            for waiter in self.waiting.drain(..) {
                let _ = waiter.send(Ok(instance.pid));
            }

            // Phase: run.
            match self.watch(&mut instance, &mut notices, false).await {
                Outcome::Ready => unreachable!("READY is only reported while starting"),
                Outcome::Failed(how) => {
                    if ready_at.elapsed() >= backoff::STABLE_AFTER {
                        self.status.send_modify(|s| s.consecutive_failures = 0);
                    }
                    if self.fail_and_back_off(how).await.is_break() {
                        return;
                    }
                }
                Outcome::Interrupted(why) => {
                    if self.interrupt(why, &mut instance).await.is_break() {
                        return;
                    }
                }
            }
        }
    }

    /// Follows an instance: its notices, its exit, restart requests and the stack's
    /// shutdown. While `starting`, `READY=1` ends the wait and [`START_TIMEOUT`] applies.
    async fn watch(
        &mut self,
        instance: &mut Instance,
        notices: &mut Lines<BufReader<UnixStream>>,
        starting: bool,
    ) -> Outcome {
        // Only armed while starting (see the branch's guard below).
        let deadline = tokio::time::sleep(START_TIMEOUT);
        tokio::pin!(deadline);
        let mut notices_open = true;
        loop {
            tokio::select! {
                line = notices.next_line(), if notices_open => match line {
                    Ok(Some(line)) => match Notice::parse(&line) {
                        Some(Notice::Ready) if starting => return Outcome::Ready,
                        Some(Notice::Stopping) if !starting => {
                            self.status.send_modify(|s| s.enter(DaemonState::Draining));
                        }
                        Some(Notice::Status(text)) => self.status.send_modify(|s| s.note = text),
                        _ => {}
                    },
                    _ => notices_open = false,
                },
                exit = instance.child.wait() => {
                    let how = describe_exit(exit);
                    return Outcome::Failed(if starting {
                        format!("exited before ready: {how}")
                    } else {
                        how
                    });
                }
                () = &mut deadline, if starting => {
                    kill_and_reap(instance).await;
                    return Outcome::Failed(format!(
                        "not ready within {}s; killed", START_TIMEOUT.as_secs()
                    ));
                }
                kind = self.shutdown.wait() => {
                    return Outcome::Interrupted(Interruption::Stop(kind));
                }
                Some(reply) = self.restarts.recv() => {
                    return Outcome::Interrupted(Interruption::Restart(reply));
                }
            }
        }
    }

    /// Carries out a restart or stop that arrived while `instance` ran. `Break` ends the
    /// slot.
    async fn interrupt(&mut self, why: Interruption, instance: &mut Instance) -> ControlFlow<()> {
        match why {
            Interruption::Stop(kind) => {
                self.stop_instance(instance, kind).await;
                self.stopped(kind);
                ControlFlow::Break(())
            }
            Interruption::Restart(reply) => {
                tracing::info!(
                    daemon = self.spec.name,
                    pid = instance.pid,
                    "restart requested"
                );
                self.waiting.push(reply);
                // Requests queued meanwhile share this restart.
                while let Ok(reply) = self.restarts.try_recv() {
                    self.waiting.push(reply);
                }
                self.stop_instance(instance, ShutdownKind::Graceful).await;
                ControlFlow::Continue(())
            }
        }
    }

    /// Records a failure, then waits out the backoff, still obeying restarts and stops.
    async fn fail_and_back_off(&mut self, reason: String) -> ControlFlow<()> {
        tracing::warn!(daemon = self.spec.name, "{reason}");
        self.status.send_modify(|s| {
            s.consecutive_failures += 1;
            s.last_exit = reason.clone();
            s.pid = 0;
            s.ready_since = None;
        });
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(Err(format!("new instance failed: {reason}")));
        }
        let failures = self.status.borrow().consecutive_failures;
        let delay = backoff::delay(failures);
        self.status.send_modify(|s| {
            s.enter(if failures >= backoff::CRASH_LOOP_THRESHOLD {
                DaemonState::Failed
            } else {
                DaemonState::Backoff
            });
            s.next_start_at = Some(Instant::now() + delay);
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => ControlFlow::Continue(()),
            kind = self.shutdown.wait() => {
                self.stopped(kind);
                ControlFlow::Break(())
            }
            Some(reply) = self.restarts.recv() => {
                self.waiting.push(reply);
                ControlFlow::Continue(())
            }
        }
    }

    fn stopped(&mut self, kind: ShutdownKind) {
        self.status.send_modify(|s| {
            s.enter(DaemonState::Stopped);
            s.pid = 0;
            s.ready_since = None;
        });
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(Err(format!("the stack is stopping ({kind:?})")));
        }
        self.restarts.close();
        while let Ok(waiter) = self.restarts.try_recv() {
            let _ = waiter.send(Err("the stack is stopping".into()));
        }
    }

    /// Asks the instance to stop (SIGTERM to drain, SIGINT to stop fast) and kills it
    /// when it overstays. A fast stop of the stack during a drain turns it into a fast
    /// stop of the instance.
    async fn stop_instance(&mut self, instance: &mut Instance, kind: ShutdownKind) {
        use nix::sys::signal::Signal;
        self.status.send_modify(|s| s.enter(DaemonState::Draining));
        let (signal, patience) = match kind {
            ShutdownKind::Graceful => (Signal::SIGTERM, self.spec.grace + GRACE_MARGIN),
            ShutdownKind::Fast => (Signal::SIGINT, FAST_STOP_TIMEOUT),
        };
        send_signal(instance.pid, signal);
        let mut deadline = tokio::time::Instant::now() + patience;
        let mut hurried = kind == ShutdownKind::Fast;
        let shutdown = self.shutdown.clone();
        let exit = loop {
            tokio::select! {
                exit = instance.child.wait() => break Some(exit),
                () = tokio::time::sleep_until(deadline) => break None,
                () = shutdown.wait_fast(), if !hurried => {
                    hurried = true;
                    send_signal(instance.pid, Signal::SIGINT);
                    deadline = deadline.min(tokio::time::Instant::now() + FAST_STOP_TIMEOUT);
                }
            }
        };
        let how = match exit {
            Some(exit) => describe_exit(exit),
            None => {
                tracing::warn!(
                    daemon = self.spec.name,
                    pid = instance.pid,
                    "still running after its stop time; killing"
                );
                kill_and_reap(instance).await;
                "killed after overstaying its stop".into()
            }
        };
        tracing::info!(
            daemon = self.spec.name,
            pid = instance.pid,
            "stopped: {how}"
        );
        self.status.send_modify(|s| {
            s.last_exit = how;
            s.pid = 0;
            s.ready_since = None;
        });
    }
}

fn send_signal(pid: u32, signal: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

async fn kill_and_reap(instance: &mut Instance) {
    let _ = instance.child.start_kill();
    let _ = instance.child.wait().await;
}

/// "exited with status 1", "killed by SIGKILL", ...
pub fn describe_exit(exit: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}
