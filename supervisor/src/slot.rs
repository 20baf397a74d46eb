//! One daemon under supervision: start it, wait for readiness, watch it, restart it with
//! backoff when it dies, stop it on request.
//!
//! Each slot runs as one task through named phases: **start** (spawn with the held
//! sockets), **await readiness** (bounded by [`START_TIMEOUT`]), **run** (until the
//! instance exits or a command arrives), **backoff** (after a failure), **stop**. Every
//! phase also listens for commands, so a stop or restart is never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use securely_core::readiness::Notice;
use securely_core::shutdown::ShutdownKind;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

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

/// A request to a slot.
#[derive(Debug)]
enum Command {
    /// Replace the instance; answer with the new pid once it is ready, or the reason.
    Restart(oneshot::Sender<Result<u32, String>>),
    /// Stop the instance and the slot.
    Stop(ShutdownKind, oneshot::Sender<()>),
}

/// The handle the rest of the supervisor holds on a slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    status: watch::Receiver<SlotStatus>,
    commands: mpsc::Sender<Command>,
}

impl Slot {
    /// Starts supervising `spec` in a new task.
    pub fn start(spec: SlotSpec) -> Self {
        let initial = SlotStatus::new(
            spec.sockets.urls(),
            spec.tree.clone(),
            spec.sockets.grpc_path.display().to_string(),
        );
        let (status_tx, status) = watch::channel(initial);
        let (commands_tx, commands) = mpsc::channel(8);
        let name = spec.name;
        tokio::spawn(Supervision::new(spec, status_tx, commands).run());
        Self {
            name,
            status,
            commands: commands_tx,
        }
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
        self.commands
            .send(Command::Restart(tx))
            .await
            .map_err(|_| format!("{} is shutting down", self.name))?;
        rx.await
            .map_err(|_| format!("{} is shutting down", self.name))?
    }

    /// Stops the daemon; returns once its instance is gone.
    pub async fn stop(&self, kind: ShutdownKind) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(kind, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// How waiting for readiness ended.
enum Startup {
    Ready,
    Failed(String),
    Interrupted(Command),
}

/// How a running instance ended.
enum Ending {
    Exited(String),
    Interrupted(Command),
}

/// The task behind a [`Slot`].
struct Supervision {
    spec: SlotSpec,
    status: watch::Sender<SlotStatus>,
    commands: mpsc::Receiver<Command>,
    /// Restart callers waiting for the next ready instance.
    waiting: Vec<oneshot::Sender<Result<u32, String>>>,
}

impl Supervision {
    fn new(
        spec: SlotSpec,
        status: watch::Sender<SlotStatus>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        Self {
            spec,
            status,
            commands,
            waiting: Vec::new(),
        }
    }

    async fn run(mut self) {
        let mut first = true;
        loop {
            // Phase: start.
            if !first {
                self.status.send_modify(|s| s.restarts += 1);
            }
            first = false;
            self.status.send_modify(|s| s.enter(DaemonState::Starting));
            let fds = self.spec.sockets.fds();
            let spawned = child::spawn(&self.spec.binary, &fds, &self.spec.settings_yaml);
            let (mut instance, notices) = match spawned {
                Ok(spawned) => spawned,
                Err(e) => {
                    self.failed(format!("{e:#}"));
                    if self.back_off().await.is_break() {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(daemon = self.spec.name, pid = instance.pid, "started");
            self.status.send_modify(|s| s.pid = instance.pid);
            let mut notices = BufReader::new(notices).lines();

            // Phase: await readiness.
            match self.await_ready(&mut instance, &mut notices).await {
                Startup::Ready => {}
                Startup::Failed(reason) => {
                    self.failed(reason);
                    if self.back_off().await.is_break() {
                        return;
                    }
                    continue;
                }
                Startup::Interrupted(command) => {
                    if self.obey(command, instance).await.is_break() {
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
            match self.watch_running(&mut instance, &mut notices).await {
                Ending::Exited(how) => {
                    if ready_at.elapsed() >= backoff::STABLE_AFTER {
                        self.status.send_modify(|s| s.consecutive_failures = 0);
                    }
                    tracing::warn!(daemon = self.spec.name, pid = instance.pid, "{how}");
                    self.failed(how);
                    if self.back_off().await.is_break() {
                        return;
                    }
                }
                Ending::Interrupted(command) => {
                    if self.obey(command, instance).await.is_break() {
                        return;
                    }
                }
            }
        }
    }

    async fn await_ready(
        &mut self,
        instance: &mut Instance,
        notices: &mut Lines<BufReader<UnixStream>>,
    ) -> Startup {
        let deadline = tokio::time::sleep(START_TIMEOUT);
        tokio::pin!(deadline);
        let mut notices_open = true;
        loop {
            tokio::select! {
                line = notices.next_line(), if notices_open => match line {
                    Ok(Some(line)) => match Notice::parse(&line) {
                        Some(Notice::Ready) => return Startup::Ready,
                        Some(Notice::Status(text)) => self.status.send_modify(|s| s.note = text),
                        _ => {}
                    },
                    _ => notices_open = false,
                },
                exit = instance.child.wait() => {
                    return Startup::Failed(format!("exited before ready: {}", describe_exit(exit)));
                }
                () = &mut deadline => {
                    kill_and_reap(instance).await;
                    return Startup::Failed(format!(
                        "not ready within {}s; killed", START_TIMEOUT.as_secs()
                    ));
                }
                Some(command) = self.commands.recv() => return Startup::Interrupted(command),
            }
        }
    }

    async fn watch_running(
        &mut self,
        instance: &mut Instance,
        notices: &mut Lines<BufReader<UnixStream>>,
    ) -> Ending {
        let mut notices_open = true;
        loop {
            tokio::select! {
                line = notices.next_line(), if notices_open => match line {
                    Ok(Some(line)) => match Notice::parse(&line) {
                        Some(Notice::Stopping) => {
                            self.status.send_modify(|s| s.enter(DaemonState::Draining));
                        }
                        Some(Notice::Status(text)) => self.status.send_modify(|s| s.note = text),
                        _ => {}
                    },
                    _ => notices_open = false,
                },
                exit = instance.child.wait() => return Ending::Exited(describe_exit(exit)),
                Some(command) = self.commands.recv() => return Ending::Interrupted(command),
            }
        }
    }

    /// Carries out a command that arrived while `instance` ran. `Break` ends the slot.
    async fn obey(
        &mut self,
        command: Command,
        mut instance: Instance,
    ) -> std::ops::ControlFlow<()> {
        match command {
            Command::Stop(kind, done) => {
                self.stop_instance(&mut instance, kind).await;
                self.stopped();
                let _ = done.send(());
                std::ops::ControlFlow::Break(())
            }
            Command::Restart(reply) => {
                tracing::info!(
                    daemon = self.spec.name,
                    pid = instance.pid,
                    "restart requested"
                );
                self.waiting.push(reply);
                self.stop_instance(&mut instance, ShutdownKind::Graceful)
                    .await;
                std::ops::ControlFlow::Continue(())
            }
        }
    }

    /// Waits out the backoff after a failure, still obeying commands.
    async fn back_off(&mut self) -> std::ops::ControlFlow<()> {
        let failures = self.status.borrow().consecutive_failures;
        let delay = backoff::delay(failures);
        let until = Instant::now() + delay;
        self.status.send_modify(|s| {
            let state = if failures >= backoff::CRASH_LOOP_THRESHOLD {
                DaemonState::Failed
            } else {
                DaemonState::Backoff
            };
            s.enter(state);
            s.next_start_at = Some(until);
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => std::ops::ControlFlow::Continue(()),
            Some(command) = self.commands.recv() => match command {
                Command::Stop(_, done) => {
                    self.stopped();
                    let _ = done.send(());
                    std::ops::ControlFlow::Break(())
                }
                Command::Restart(reply) => {
                    self.waiting.push(reply);
                    std::ops::ControlFlow::Continue(())
                }
            },
        }
    }

    /// Records a failed or ended instance and tells waiting restart callers.
    fn failed(&mut self, reason: String) {
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
    }

    fn stopped(&mut self) {
        self.status.send_modify(|s| {
            s.enter(DaemonState::Stopped);
            s.pid = 0;
            s.ready_since = None;
        });
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(Err(format!("{} was stopped", self.spec.name)));
        }
    }

    /// Asks the instance to stop (SIGTERM to drain, SIGINT to stop fast) and kills it
    /// when it overstays.
    async fn stop_instance(&mut self, instance: &mut Instance, kind: ShutdownKind) {
        use nix::sys::signal::Signal;
        let (signal, patience) = match kind {
            ShutdownKind::Graceful => (Signal::SIGTERM, self.spec.grace + GRACE_MARGIN),
            ShutdownKind::Fast => (Signal::SIGINT, FAST_STOP_TIMEOUT),
        };
        self.status.send_modify(|s| s.enter(DaemonState::Draining));
        send_signal(instance.pid, signal);
        match tokio::time::timeout(patience, instance.child.wait()).await {
            Ok(exit) => {
                let how = describe_exit(exit);
                tracing::info!(
                    daemon = self.spec.name,
                    pid = instance.pid,
                    "stopped: {how}"
                );
                self.status.send_modify(|s| s.last_exit = how);
            }
            Err(_) => {
                tracing::warn!(
                    daemon = self.spec.name,
                    pid = instance.pid,
                    "still running after {}s; killing",
                    patience.as_secs()
                );
                kill_and_reap(instance).await;
                self.status
                    .send_modify(|s| s.last_exit = "killed after overstaying its stop".into());
            }
        }
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
