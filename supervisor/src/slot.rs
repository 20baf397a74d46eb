//! One daemon under supervision: start it, hand it over to a new instance on request,
//! restart it with backoff when it dies, stop it when the stack stops.
//!
//! Each slot runs as one task, one loop over explicit [`Phase`]s:
//!
//! - **start**: hand the daemon over from nobody to a new instance (first start, after a
//!   failure, or on request during a backoff; see [`crate::handover`]);
//! - **run**: until the instance exits, a request arrives or the stack stops;
//! - **replace**: on request, hand the daemon over from the serving instance to a new one;
//!   the replaced instance is **retired** (it drains on its own task, bounded by the
//!   grace period);
//! - **backoff**: after a failure, until the next start is due (a request starts it now);
//! - **stop** or **export**: the end of the slot's task.
//!
//! Every phase watches the stack's [`Shutdown`], so a stop is never lost or delayed, and
//! a fast stop overrides a graceful one in progress.

use std::sync::Arc;
use std::time::Instant;

use rustix::process::Signal;
use securely_core::readiness::Notice;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::backoff;
use crate::carried::ExportedSlot;
use crate::child::{self, Instance};
use crate::events::{Events, SlotRecorder};
use crate::handover::{self, HandoverError};
use crate::operation::OperationGuard;
use crate::spec::SlotSpec;
use crate::state::{DaemonState, SlotStatus};
use crate::stopping::{self, GRACE_MARGIN};

/// A completed hand-over.
#[derive(Debug, Clone, Copy)]
pub struct Replaced {
    /// The new instance, serving.
    pub pid: u32,
    /// The instance it replaced, now draining (0 if none ran).
    pub old_pid: u32,
}

/// Why a requested hand-over did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The stack stops (or the slot's task has ended): nothing new starts.
    #[error("the stack is stopping")]
    Stopping,
    /// The new instance failed (why, in one line); the old one serves on unless it is
    /// gone too.
    #[error("{0}")]
    Failed(String),
}

/// The slot's task has ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}: supervision has ended")]
pub struct Ended(&'static str);

/// A request for a hand-over, answered once it is over.
struct ReplaceRequest {
    reply: oneshot::Sender<Result<Replaced, ReplaceError>>,
    /// The right to run it, held until it is done (even if the caller goes away).
    _guard: Option<OperationGuard>,
}

impl ReplaceRequest {
    fn answer(self, result: Result<Replaced, ReplaceError>) {
        let _ = self.reply.send(result);
    }
}

/// What the rest of the supervisor asks of a slot.
enum Request {
    /// Hand the daemon over to a new instance.
    Replace(ReplaceRequest),
    /// Give up the instances, still running, for an exec of the supervisor.
    Export(oneshot::Sender<ExportedSlot>),
    /// Have the instance close its sled tree (it keeps serving what needs none).
    Release(oneshot::Sender<()>),
}

/// The phases of a slot's task; each returns the next.
enum Phase {
    /// Start a new instance, answering `request` if one asked for it.
    Start(Option<ReplaceRequest>),
    /// An instance serves.
    Run(Instance),
    /// Hand the daemon over from the serving instance to a new one.
    Replace(Instance, ReplaceRequest),
    /// Wait after a failure (the reason) before the next start.
    Backoff(String),
    /// Stop the serving instance, if any, and end.
    Stop(Option<Instance>, ShutdownKind),
    /// Hand the instances, still running, to the next image of the supervisor, and end.
    Export(Option<Instance>, oneshot::Sender<ExportedSlot>),
}

/// The handle the rest of the supervisor holds on a slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    status: watch::Receiver<SlotStatus>,
    requests: mpsc::Sender<Request>,
}

impl Slot {
    /// Starts supervising `spec` in a new task, which ends once `shutdown` is pulled and
    /// every instance is gone (or the slot is exported). `adopted` are the instances a
    /// previous image of the supervisor ran.
    pub fn start(
        spec: SlotSpec,
        shutdown: Shutdown,
        adopted: Option<ExportedSlot>,
        events: Events,
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
            status: Arc::new(SlotRecorder::new(name, status_tx, events)),
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

    /// Hands the daemon over to a new instance; answers once the new one serves, or with
    /// the reason it failed (the old one then still serves). `guard`, if given, is held
    /// until the hand-over is over.
    pub async fn replace(&self, guard: Option<OperationGuard>) -> Result<Replaced, ReplaceError> {
        let (reply, answer) = oneshot::channel();
        let request = ReplaceRequest {
            reply,
            _guard: guard,
        };
        self.requests
            .send(Request::Replace(request))
            .await
            .map_err(|_| ReplaceError::Stopping)?;
        answer.await.map_err(|_| ReplaceError::Stopping)?
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
    pub async fn export(&self) -> Result<ExportedSlot, Ended> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Export(reply))
            .await
            .map_err(|_| Ended(self.name))?;
        answer.await.map_err(|_| Ended(self.name))
    }
}

/// The task behind a [`Slot`].
struct Supervision {
    spec: Arc<SlotSpec>,
    status: Arc<SlotRecorder>,
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
    /// The loop over the phases.
    async fn run(mut self, adopted: Option<ExportedSlot>) {
        let mut phase = match self.adopt(adopted) {
            Some(instance) => Phase::Run(instance),
            None => Phase::Start(None),
        };
        loop {
            phase = match phase {
                Phase::Start(request) => self.start(request).await,
                Phase::Run(instance) => self.run_instance(instance).await,
                Phase::Replace(old, request) => self.replace(old, request).await,
                Phase::Backoff(reason) => self.back_off(reason).await,
                Phase::Stop(instance, kind) => {
                    if let Some(instance) = instance {
                        self.stop_instance(&instance, kind).await;
                    }
                    self.finish(kind).await;
                    return;
                }
                Phase::Export(instance, reply) => {
                    let _ = reply.send(self.export(instance).await);
                    return;
                }
            };
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
        let adopted = Instance::adopt(exported).map(|i| i.reporting_to(self.status.clone()));
        match adopted {
            Ok(instance) => {
                tracing::info!(daemon = self.spec.name, pid = instance.pid, "adopted");
                self.now_serving(&instance);
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

    /// Phase: start. The hand-over from nobody.
    async fn start(&mut self, request: Option<ReplaceRequest>) -> Phase {
        if let Some(kind) = self.shutdown.requested() {
            if let Some(request) = request {
                request.answer(Err(ReplaceError::Stopping));
            }
            return Phase::Stop(None, kind);
        }
        let result = self.hand_over(None).await;
        match result {
            Ok(new) => {
                if let Some(request) = request {
                    request.answer(Ok(Replaced {
                        pid: new.pid,
                        old_pid: 0,
                    }));
                }
                Phase::Run(new)
            }
            Err(HandoverError::Failed { reason, .. }) => {
                if let Some(request) = request {
                    request.answer(Err(ReplaceError::Failed(reason.clone())));
                }
                Phase::Backoff(reason)
            }
            Err(HandoverError::Stop(kind)) => {
                if let Some(request) = request {
                    request.answer(Err(ReplaceError::Stopping));
                }
                Phase::Stop(None, kind)
            }
        }
    }

    /// Phase: run. Follows a serving instance until it exits, a request arrives or the
    /// stack stops.
    async fn run_instance(&mut self, instance: Instance) -> Phase {
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
                exit = instance.wait() => {
                    instance.flush_notices().await;
                    let stable = self
                        .status
                        .borrow()
                        .ready_since
                        .is_some_and(|since| since.elapsed() >= backoff::STABLE_AFTER);
                    if stable {
                        self.status.send_modify(|s| s.consecutive_failures = 0);
                    }
                    return Phase::Backoff(child::describe_exit(exit));
                }
                kind = self.shutdown.wait() => return Phase::Stop(Some(instance), kind),
                Some(request) = self.requests.recv() => match request {
                    Request::Replace(request) => return Phase::Replace(instance, request),
                    Request::Export(reply) => return Phase::Export(Some(instance), reply),
                    Request::Release(reply) => {
                        handover::release(self.spec.name, &instance).await;
                        let _ = reply.send(());
                    }
                },
            }
        }
    }

    /// Phase: replace. The hand-over from the serving instance, which is retired once the
    /// new one serves, or serves on when the new one failed (unless it is gone too).
    async fn replace(&mut self, old: Instance, request: ReplaceRequest) -> Phase {
        match self.hand_over(Some(&old)).await {
            Ok(new) => {
                request.answer(Ok(Replaced {
                    pid: new.pid,
                    old_pid: old.pid,
                }));
                self.retire(old);
                Phase::Run(new)
            }
            Err(HandoverError::Failed { reason, old_lost }) => {
                request.answer(Err(ReplaceError::Failed(reason.clone())));
                if old_lost {
                    return Phase::Backoff(reason);
                }
                self.status.send_modify(|s| {
                    s.enter(DaemonState::Ready);
                    s.pid = old.pid;
                });
                Phase::Run(old)
            }
            Err(HandoverError::Stop(kind)) => {
                request.answer(Err(ReplaceError::Stopping));
                Phase::Stop(Some(old), kind)
            }
        }
    }

    /// Phase: backoff. Records the failure, then waits until the next start is due,
    /// still obeying requests and stops.
    async fn back_off(&mut self, reason: String) -> Phase {
        tracing::warn!(daemon = self.spec.name, "{reason}");
        self.status.send_modify(|s| {
            s.consecutive_failures += 1;
            s.last_exit = reason;
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
        let due = tokio::time::sleep(delay);
        tokio::pin!(due);
        loop {
            tokio::select! {
                () = &mut due => return Phase::Start(None),
                kind = self.shutdown.wait() => return Phase::Stop(None, kind),
                Some(request) = self.requests.recv() => match request {
                    // A replacement now is the next start, without waiting.
                    Request::Replace(request) => return Phase::Start(Some(request)),
                    Request::Export(reply) => return Phase::Export(None, reply),
                    Request::Release(reply) => {
                        let _ = reply.send(());
                    }
                },
            }
        }
    }

    /// Starts a new instance and hands the daemon over to it from `old`.
    async fn hand_over(&mut self, old: Option<&Instance>) -> Result<Instance, HandoverError> {
        if old.is_none() {
            self.status.send_modify(|s| s.enter(DaemonState::Starting));
        }
        if self.started_once {
            self.status.send_modify(|s| s.restarts += 1);
        }
        self.started_once = true;
        let new = handover::run(&self.spec, old, &self.status, &self.shutdown).await?;
        tracing::info!(daemon = self.spec.name, pid = new.pid, "ready");
        self.now_serving(&new);
        Ok(new)
    }

    /// Shows `instance` as the one serving, ready since now.
    fn now_serving(&self, instance: &Instance) {
        self.status.send_modify(|s| {
            s.enter(DaemonState::Ready);
            s.pid = instance.pid;
            s.ready_since = Some(Instant::now());
        });
    }

    /// Tells a replaced instance to drain, and follows it on its own task.
    fn retire(&mut self, instance: Instance) {
        tracing::info!(
            daemon = self.spec.name,
            pid = instance.pid,
            "draining the replaced instance"
        );
        instance.signal(Signal::TERM);
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
                how = stopping::drain(&instance, patience, &shutdown) => {
                    tracing::info!(daemon = name, pid, "replaced instance {how}");
                    status.retired_gone(pid, how);
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

    /// The slot ends: waits for the replaced instances still draining, and refuses the
    /// requests still queued.
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
            if let Request::Replace(request) = request {
                request.answer(Err(ReplaceError::Stopping));
            }
        }
    }

    /// Stops the serving instance as the stack stops.
    async fn stop_instance(&mut self, instance: &Instance, kind: ShutdownKind) {
        self.status.send_modify(|s| s.enter(DaemonState::Draining));
        let how = stopping::stop(instance, kind, self.spec.grace, &self.shutdown).await;
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
