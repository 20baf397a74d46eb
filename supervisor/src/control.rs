//! The supervisor's control service on `control.sock`: status, restart, reload, stop.

use std::sync::Arc;
use std::time::Duration;

use securely_core::rpc::Access;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use securely_proto::supervisor::supervisor_server::{Supervisor, SupervisorServer};
use securely_proto::supervisor::{
    Event, ProcessStatus, ReloadReply, ReloadRequest, RestartReply, RestartRequest, StatusReply,
    StatusRequest, StopReply, StopRequest, WatchRequest,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::events;
use crate::operation::{Busy, Operation, Operations};
use crate::serving::Serving;
use crate::slot::ReplaceError;
use crate::stack::Stack;
use crate::trigger::{Refused, UpgradeTrigger};
use crate::upgrades::Upgrades;

/// How long calls in flight get when the control server stops (the supervisor exits or
/// re-executes).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The control service.
#[derive(Clone)]
pub struct ControlService {
    stack: Arc<Stack>,
    shutdown: Shutdown,
    access: Access,
    control_socket: String,
    upgrades: Arc<Upgrades>,
    operations: Operations,
    trigger: mpsc::Sender<UpgradeTrigger>,
}

impl ControlService {
    /// A control service over `stack`, as `serving` runs it; `Stop` pulls `shutdown`,
    /// `Reload` sends on `trigger`.
    pub fn new(
        stack: Arc<Stack>,
        serving: &Serving,
        shutdown: Shutdown,
        access: Access,
        trigger: mpsc::Sender<UpgradeTrigger>,
    ) -> Self {
        Self {
            stack,
            shutdown,
            access,
            control_socket: serving.settings.control_socket().display().to_string(),
            upgrades: serving.upgrades.clone(),
            operations: serving.operations.clone(),
            trigger,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> SupervisorServer<Self> {
        SupervisorServer::new(self)
    }
}

#[tonic::async_trait]
impl Supervisor for ControlService {
    type WatchStream = events::WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let slots: Vec<_> = self
            .stack
            .slots()
            .iter()
            .map(|slot| (slot.name, slot.watch()))
            .collect();
        Ok(Response::new(events::stream(
            self.upgrades.events(),
            request.into_inner().after_seq,
            &slots,
        )))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let state = if self.shutdown.requested().is_some() {
            "draining"
        } else {
            "ready"
        };
        let supervisor = ProcessStatus {
            name: "supervisor".into(),
            state: state.into(),
            pid: std::process::id(),
            uptime_ms: self.stack.started().elapsed().as_millis() as u64,
            listeners: vec![format!("unix://{}", self.control_socket)],
            socket: self.control_socket.clone(),
            ..Default::default()
        };
        let daemons = self
            .stack
            .slots()
            .iter()
            .map(|slot| slot.status().to_proto(slot.name))
            .collect();
        Ok(Response::new(StatusReply {
            supervisor: Some(supervisor),
            daemons,
            upgrade: Some(self.upgrades.to_proto()),
        }))
    }

    async fn restart(
        &self,
        request: Request<RestartRequest>,
    ) -> Result<Response<RestartReply>, Status> {
        self.access.authorize(&request)?;
        if self.shutdown.requested().is_some() {
            return Err(stopping());
        }
        let name = request.into_inner().daemon;
        let slot = self.stack.slot(&name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "daemon: unknown daemon {name:?} (expected one of {})",
                securely_core::DAEMONS.join(", ")
            ))
        })?;
        let guard = self
            .operations
            .begin(Operation::Restart(name.clone()))
            .map_err(busy)?;
        tracing::info!(daemon = %name, "restart requested");
        let events = self.upgrades.events();
        let id = events.next_restart_id();
        let outcome = |state: &str, pid: u32, detail: String| Event {
            kind: "restart".into(),
            daemon: name.clone(),
            state: state.into(),
            pid,
            id,
            detail,
            ..Default::default()
        };
        events.publish(outcome("running", 0, String::new()));
        let result = slot.replace(Some(guard)).await;
        events.publish(match &result {
            Ok(replaced) => outcome(
                "done",
                replaced.pid,
                format!("replaced {}", replaced.old_pid),
            ),
            Err(e) => outcome("failed", 0, e.to_string()),
        });
        match result {
            Ok(replaced) => Ok(Response::new(RestartReply {
                pid: replaced.pid,
                old_pid: replaced.old_pid,
            })),
            Err(ReplaceError::Stopping) => Err(stopping()),
            Err(ReplaceError::Failed(reason)) => Err(Status::aborted(format!(
                "restart of {name} failed: {reason}"
            ))),
        }
    }

    async fn reload(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadReply>, Status> {
        self.access.authorize(&request)?;
        if self.shutdown.requested().is_some() {
            return Err(stopping());
        }
        let guard = self.operations.begin(Operation::Upgrade).map_err(busy)?;
        let (reply, answer) = oneshot::channel();
        self.trigger
            .try_send(UpgradeTrigger::call(reply, guard))
            .map_err(|_| stopping())?;
        match answer.await {
            Ok(Ok(id)) => Ok(Response::new(ReloadReply { id })),
            Ok(Err(Refused::Stopping(_))) | Err(_) => Err(stopping()),
            Ok(Err(refused @ Refused::Check(_))) => Err(Status::failed_precondition(format!(
                "upgrade refused, nothing changed: {refused}"
            ))),
        }
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopReply>, Status> {
        self.access.authorize(&request)?;
        let kind = if request.into_inner().graceful {
            ShutdownKind::Graceful
        } else {
            ShutdownKind::Fast
        };
        tracing::info!(?kind, "stop requested over gRPC");
        self.shutdown.request(kind);
        Ok(Response::new(StopReply {}))
    }
}

/// Another operation runs: try again later.
fn busy(busy: Busy) -> Status {
    Status::unavailable(busy.to_string())
}

/// The stack is stopping: nothing new starts.
fn stopping() -> Status {
    Status::unavailable("the stack is stopping")
}
