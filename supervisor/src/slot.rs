//! One daemon under supervision: start it, hand it over to a new instance on request,
//! restart it with backoff when it dies, stop it when the stack stops.
//!
//! Each slot runs as one task through named phases: **hand-over** (start a new instance
//! and move the daemon's sled tree to it, see [`crate::handover`]; after a crash or at
//! first there is no old instance), **run** (until the instance exits, a replacement is
//! requested, the supervisor re-executes or the stack stops), **backoff** (after a
//! failure), **stop**. A replaced instance is **retired**: it drains on its own task,
//! bounded by the grace period. Every phase watches the stack's [`Shutdown`], so a stop is
//! never lost or delayed, and a fast stop overrides a graceful one in progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use securely_core::readiness::Notice;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::backoff;
use crate::carried::ExportedSlot;
use crate::child::{self, Instance};
use crate::handover::{self, HandoverError};
use crate::sockets::DaemonSockets;
use crate::stack::OperationGuard;
use crate::state::{DaemonState, SlotStatus};

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
    pub binary: PathBuf,
    /// The sockets handed to every instance.
    pub sockets: DaemonSockets,
    /// The daemon's sled tree (for status).
    pub tree: String,
    /// The resolved settings, as handed to the daemon.
    pub settings_yaml: Arc<String>,
    /// How long a draining instance may take.
    pub grace: Duration,
}

/// A completed hand-over.
#[derive(Debug, Clone, Copy)]
pub struct Replaced {
    /// The new instance, serving.
    pub pid: u32,
    /// The instance it replaced, now draining (0 if none ran).
    pub old_pid: u32,
}

/// What the rest of the supervisor asks of a slot.
enum Request {
    /// Hand the daemon over to a new instance, of `spec` when given.
    Replace {
        spec: Option<Arc<SlotSpec>>,
        reply: oneshot::Sender<Result<Replaced, String>>,
        /// The right to run it, held until it is done (even if the caller goes away).
        guard: Option<OperationGuard>,
    },
    /// Give up the instances, still running, for an exec of the supervisor.
    Export(oneshot::Sender<ExportedSlot>),
    /// Have the instance close its sled tree (it keeps serving what needs none).
    Release(oneshot::Sender<()>),
}

/// The handle the rest of the supervisor holds on a slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    status: watch::Receiver<SlotStatus>,
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Replace { .. } => "Replace",
            Request::Export(_) => "Export",
            Request::Release(_) => "Release",
        })
    }
}

impl Slot {
    /// Starts supervising `spec` in a new task, which ends once `shutdown` is pulled and
    /// every instance is gone (or the slot is exported). `adopted` are the instances a
    /// previous image of the supervisor ran.
    pub fn start(
        spec: SlotSpec,
        shutdown: Shutdown,
        adopted: Option<ExportedSlot>,
    ) -> (Self, JoinHandle<()>) {
        let mut initial = SlotStatus::new(
            spec.sockets.urls(),
            spec.tree.clone(),
            spec.sockets.grpc_path.display().to_string(),
        );
        if let Some(adopted) = &adopted {
            initial.restarts = adopted.restarts;
            initial.last_exit = adopted.last_exit.clone();
        }
        let (status_tx, status) = watch::channel(initial);
        let (requests_tx, requests) = mpsc::channel(1);
        let name = spec.name;
        let supervision = Supervision {
            spec: Arc::new(spec),
            status: Arc::new(status_tx),
            requests,
            shutdown,
            retiring: JoinSet::new(),
            exporting: watch::channel(false).0,
            started_once: adopted.is_some(),
        };
        let task = tokio::spawn(supervision.run(adopted));
        let slot = Self {
            name,
            status,
            requests: requests_tx,
        };
        (slot, task)
    }

    /// The slot's current status.
    pub fn status(&self) -> SlotStatus {
        self.status.borrow().clone()
    }

    /// Whether the slot's task has ended.
    pub fn ended(&self) -> bool {
        self.status.has_changed().is_err()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<SlotStatus> {
        self.status.clone()
    }

    /// Hands the daemon over to a new instance (of `spec` when given); answers once the
    /// new one serves, or with the reason it failed (the old one then still serves).
    /// `guard`, if given, is held until the hand-over is over.
    pub async fn replace(
        &self,
        spec: Option<SlotSpec>,
        guard: Option<OperationGuard>,
    ) -> Result<Replaced, String> {
        let (reply, answer) = oneshot::channel();
        let spec = spec.map(Arc::new);
        self.requests
            .send(Request::Replace { spec, reply, guard })
            .await
            .map_err(|_| format!("{} is stopped", self.name))?;
        answer
            .await
            .map_err(|_| format!("{} is stopped", self.name))?
    }

    /// Has the serving instance close its sled tree, for another supervisor's daemons to
    /// open; it serves on what needs no tree until stopped.
    pub async fn release(&self) {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::Release(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Ends supervision without stopping the instances, which the next image of the
    /// supervisor adopts.
    pub async fn export(&self) -> Result<ExportedSlot, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Export(reply))
            .await
            .map_err(|_| format!("{} is stopped", self.name))?;
        answer
            .await
            .map_err(|_| format!("{} is stopped", self.name))
    }
}

/// How the run phase ended.
enum RunEnd {
    /// The instance exited.
    Exited(String),
    /// The stack stops.
    Stop(ShutdownKind),
    /// A request arrived.
    Request(Request),
}

/// How a backoff ended.
enum AfterBackoff {
    /// Time to start a new instance.
    Start,
    /// A replacement requested meanwhile started one, which serves.
    Serving(Box<Instance>),
    /// The slot ends (stop or export).
    End,
}

/// The task behind a [`Slot`].
struct Supervision {
    spec: Arc<SlotSpec>,
    status: Arc<watch::Sender<SlotStatus>>,
    requests: mpsc::Receiver<Request>,
    shutdown: Shutdown,
    /// Replaced instances, draining.
    retiring: JoinSet<Option<u32>>,
    /// Turned on to have the retiring tasks hand their instances back, still running.
    exporting: watch::Sender<bool>,
    /// Whether an instance was started (or adopted): the next one is a restart.
    started_once: bool,
}

impl Supervision {
    async fn run(mut self, adopted: Option<ExportedSlot>) {
        let mut current = self.adopt(adopted);
        loop {
            if let Some(kind) = self.shutdown.requested()
                && current.is_none()
            {
                self.finish(kind).await;
                return;
            }
            let serving = match current.take() {
                Some(instance) => instance,
                // Phase: hand-over, from nobody (first start, or after a failure).
                None => match self.hand_over(None, self.spec.clone()).await {
                    Ok(instance) => instance,
                    Err(HandoverError::Stop(kind)) => {
                        self.finish(kind).await;
                        return;
                    }
                    Err(HandoverError::Failed { reason, .. }) => {
                        match self.fail_and_back_off(reason).await {
                            AfterBackoff::Start => continue,
                            AfterBackoff::Serving(new) => *new,
                            AfterBackoff::End => return,
                        }
                    }
                },
            };

            // Phase: run.
            let ready_at = Instant::now();
            match self.run_instance(&serving).await {
                RunEnd::Exited(how) => {
                    if ready_at.elapsed() >= backoff::STABLE_AFTER {
                        self.status.send_modify(|s| s.consecutive_failures = 0);
                    }
                    match self.fail_and_back_off(how).await {
                        AfterBackoff::Start => {}
                        AfterBackoff::Serving(new) => current = Some(*new),
                        AfterBackoff::End => return,
                    }
                }
                RunEnd::Stop(kind) => {
                    self.stop_instance(&serving, kind).await;
                    self.finish(kind).await;
                    return;
                }
                RunEnd::Request(Request::Export(reply)) => {
                    let _ = reply.send(self.export(Some(serving)).await);
                    return;
                }
                RunEnd::Request(Request::Release(reply)) => {
                    handover::release(self.spec.name, &serving).await;
                    let _ = reply.send(());
                    current = Some(serving);
                }
                RunEnd::Request(Request::Replace {
                    spec,
                    reply,
                    guard: _held,
                }) => {
                    let spec = spec.unwrap_or_else(|| self.spec.clone());
                    match self.hand_over(Some(&serving), spec.clone()).await {
                        Ok(new) => {
                            let _ = reply.send(Ok(Replaced {
                                pid: new.pid,
                                old_pid: serving.pid,
                            }));
                            self.spec = spec;
                            self.retire(serving);
                            current = Some(new);
                        }
                        Err(HandoverError::Failed { reason, old_lost }) => {
                            let _ = reply.send(Err(reason.clone()));
                            if old_lost {
                                match self.fail_and_back_off(reason).await {
                                    AfterBackoff::Start => {}
                                    AfterBackoff::Serving(new) => current = Some(*new),
                                    AfterBackoff::End => return,
                                }
                            } else {
                                self.status.send_modify(|s| {
                                    s.enter(DaemonState::Ready);
                                    s.pid = serving.pid;
                                });
                                current = Some(serving);
                            }
                        }
                        Err(HandoverError::Stop(kind)) => {
                            let _ = reply.send(Err(format!("the stack is stopping ({kind:?})")));
                            self.stop_instance(&serving, kind).await;
                            self.finish(kind).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes over the instances a previous image of the supervisor ran.
    fn adopt(&mut self, adopted: Option<ExportedSlot>) -> Option<Instance> {
        let adopted = adopted?;
        for pid in adopted.draining {
            match Instance::adopt_draining(pid) {
                Ok(instance) => self.retire_signalled(instance),
                Err(e) => tracing::warn!(daemon = self.spec.name, pid, "cannot adopt: {e:#}"),
            }
        }
        let exported = adopted.current?;
        match Instance::adopt(exported) {
            Ok(instance) => {
                tracing::info!(daemon = self.spec.name, pid = instance.pid, "adopted");
                self.status.send_modify(|s| {
                    s.enter(DaemonState::Ready);
                    s.pid = instance.pid;
                    s.ready_since = Some(Instant::now());
                });
                Some(instance)
            }
            Err(e) => {
                tracing::error!(
                    daemon = self.spec.name,
                    pid = exported.pid,
                    "cannot adopt: {e:#}; starting a new instance"
                );
                None
            }
        }
    }

    /// Starts a new instance of `spec` and hands the daemon over to it from `old`.
    async fn hand_over(
        &mut self,
        old: Option<&Instance>,
        spec: Arc<SlotSpec>,
    ) -> Result<Instance, HandoverError> {
        if old.is_none() {
            self.status.send_modify(|s| s.enter(DaemonState::Starting));
        }
        if self.started_once {
            self.status.send_modify(|s| s.restarts += 1);
        }
        self.started_once = true;
        let new = handover::run(&spec, old, &self.status, &self.shutdown).await?;
        tracing::info!(daemon = spec.name, pid = new.pid, "ready");
        self.status.send_modify(|s| {
            s.enter(DaemonState::Ready);
            s.pid = new.pid;
            s.ready_since = Some(Instant::now());
        });
        Ok(new)
    }

    /// Follows a serving instance until it exits, a request arrives or the stack stops.
    async fn run_instance(&mut self, instance: &Instance) -> RunEnd {
        let mut notices_open = true;
        loop {
            tokio::select! {
                notice = instance.next_notice(), if notices_open => match notice {
                    Some(Notice::Stopping) => {
                        self.status.send_modify(|s| s.enter(DaemonState::Draining));
                    }
                    Some(Notice::Status(text)) => self.status.send_modify(|s| s.note = text),
                    Some(_) => {}
                    None => notices_open = false,
                },
                exit = instance.wait() => return RunEnd::Exited(child::describe_exit(exit)),
                kind = self.shutdown.wait() => return RunEnd::Stop(kind),
                Some(request) = self.requests.recv() => return RunEnd::Request(request),
            }
        }
    }

    /// Tells a replaced instance to drain, and follows it on its own task.
    fn retire(&mut self, instance: Instance) {
        tracing::info!(
            daemon = self.spec.name,
            pid = instance.pid,
            "draining the replaced instance"
        );
        instance.signal(nix::sys::signal::Signal::SIGTERM);
        self.retire_signalled(instance);
    }

    fn retire_signalled(&mut self, instance: Instance) {
        let pid = instance.pid;
        self.status.send_modify(|s| s.draining.push(pid));
        let status = self.status.clone();
        let shutdown = self.shutdown.clone();
        let patience = self.spec.grace + GRACE_MARGIN;
        let name = self.spec.name;
        let mut exporting = self.exporting.subscribe();
        self.retiring.spawn(async move {
            tokio::select! {
                how = drain(&instance, patience, &shutdown) => {
                    tracing::info!(daemon = name, pid, "replaced instance {how}");
                    status.send_modify(|s| s.draining.retain(|p| *p != pid));
                    None
                }
                // Handed across the exec, still draining.
                _ = exporting.wait_for(|on| *on) => Some(instance.disarm()),
            }
        });
    }

    /// Stops following the retiring instances (left running); returns their pids.
    async fn hand_back_retiring(&mut self) -> Vec<u32> {
        self.exporting.send_replace(true);
        let mut draining = Vec::new();
        while let Some(done) = self.retiring.join_next().await {
            if let Ok(Some(pid)) = done {
                draining.push(pid);
            }
        }
        draining
    }

    /// The instances, left running, for the next image of the supervisor.
    async fn export(&mut self, serving: Option<Instance>) -> ExportedSlot {
        let draining = self.hand_back_retiring().await;
        let status = self.status.borrow().clone();
        let current = match serving.map(Instance::export).transpose() {
            Ok(exported) => exported,
            Err(e) => {
                tracing::error!(
                    daemon = self.spec.name,
                    "cannot hand the instance across: {e:#}"
                );
                None
            }
        };
        ExportedSlot {
            current,
            draining,
            restarts: status.restarts,
            last_exit: status.last_exit,
        }
    }

    /// Records a failure, then waits out the backoff, still obeying requests and stops.
    async fn fail_and_back_off(&mut self, reason: String) -> AfterBackoff {
        tracing::warn!(daemon = self.spec.name, "{reason}");
        self.status.send_modify(|s| {
            s.consecutive_failures += 1;
            s.last_exit = reason.clone();
            s.pid = 0;
            s.ready_since = None;
        });
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
        let backoff = tokio::time::sleep(delay);
        tokio::pin!(backoff);
        loop {
            tokio::select! {
                () = &mut backoff => return AfterBackoff::Start,
                kind = self.shutdown.wait() => {
                    self.finish(kind).await;
                    return AfterBackoff::End;
                }
                Some(request) = self.requests.recv() => match request {
                    // A replacement now is the next start, without waiting.
                    Request::Replace {
                        spec,
                        reply,
                        guard: _held,
                    } => {
                        let spec = spec.unwrap_or_else(|| self.spec.clone());
                        return match self.hand_over(None, spec.clone()).await {
                            Ok(new) => {
                                let _ = reply.send(Ok(Replaced { pid: new.pid, old_pid: 0 }));
                                self.spec = spec;
                                AfterBackoff::Serving(Box::new(new))
                            }
                            Err(HandoverError::Failed { reason, .. }) => {
                                let _ = reply.send(Err(reason.clone()));
                                Box::pin(self.fail_and_back_off(reason)).await
                            }
                            Err(HandoverError::Stop(kind)) => {
                                let _ = reply.send(Err("the stack is stopping".into()));
                                self.finish(kind).await;
                                AfterBackoff::End
                            }
                        };
                    }
                    Request::Release(reply) => {
                        let _ = reply.send(());
                    }
                    Request::Export(reply) => {
                        let _ = reply.send(self.export(None).await);
                        return AfterBackoff::End;
                    }
                },
            }
        }
    }

    /// The slot ends: waits for the replaced instances still draining.
    async fn finish(&mut self, kind: ShutdownKind) {
        self.status.send_modify(|s| {
            s.enter(DaemonState::Stopped);
            s.pid = 0;
            s.ready_since = None;
        });
        tracing::debug!(
            daemon = self.spec.name,
            ?kind,
            "waiting for replaced instances"
        );
        while self.retiring.join_next().await.is_some() {}
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            if let Request::Replace { reply, .. } = request {
                let _ = reply.send(Err("the stack is stopping".into()));
            }
        }
    }

    /// Asks the instance to stop (SIGTERM to drain, SIGINT to stop fast) and kills it
    /// when it overstays. A fast stop of the stack during a drain turns it into a fast
    /// stop of the instance.
    async fn stop_instance(&mut self, instance: &Instance, kind: ShutdownKind) {
        use nix::sys::signal::Signal;
        self.status.send_modify(|s| s.enter(DaemonState::Draining));
        let patience = match kind {
            ShutdownKind::Graceful => {
                instance.signal(Signal::SIGTERM);
                self.spec.grace + GRACE_MARGIN
            }
            ShutdownKind::Fast => {
                instance.signal(Signal::SIGINT);
                FAST_STOP_TIMEOUT
            }
        };
        let how = drain(instance, patience, &self.shutdown).await;
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

/// Waits for an instance already told to stop, for at most `patience`; a fast stop of
/// the stack meanwhile sends SIGINT and shortens the wait; an instance that overstays is
/// killed. Returns how it ended.
pub async fn drain(instance: &Instance, patience: Duration, shutdown: &Shutdown) -> String {
    use nix::sys::signal::Signal;
    let mut deadline = tokio::time::Instant::now() + patience;
    let mut hurried = false;
    let exit = loop {
        tokio::select! {
            exit = instance.wait() => break Some(exit),
            () = tokio::time::sleep_until(deadline) => break None,
            () = shutdown.wait_fast(), if !hurried => {
                hurried = true;
                instance.signal(Signal::SIGINT);
                deadline = deadline.min(tokio::time::Instant::now() + FAST_STOP_TIMEOUT);
            }
        }
    };
    match exit {
        Some(exit) => child::describe_exit(exit),
        None => {
            tracing::warn!(
                pid = instance.pid,
                "still running after its stop time; killing"
            );
            let _ = instance.kill().await;
            "killed after overstaying its stop".into()
        }
    }
}
