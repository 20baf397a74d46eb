//! The supervisor's control service on `control.sock`: status, restart, stop.

use std::sync::Arc;

use securely_core::rpc::Access;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use securely_proto::supervisor::supervisor_server::{Supervisor, SupervisorServer};
use securely_proto::supervisor::{
    ProcessStatus, RestartReply, RestartRequest, StatusReply, StatusRequest, StopReply, StopRequest,
};
use tonic::{Request, Response, Status};

use crate::stack::Stack;

/// The control service.
#[derive(Debug, Clone)]
pub struct ControlService {
    stack: Arc<Stack>,
    shutdown: Shutdown,
    access: Access,
    control_socket: String,
}

impl ControlService {
    /// A control service over `stack`; `Stop` pulls `shutdown`.
    pub fn new(
        stack: Arc<Stack>,
        shutdown: Shutdown,
        access: Access,
        control_socket: String,
    ) -> Self {
        Self {
            stack,
            shutdown,
            access,
            control_socket,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> SupervisorServer<Self> {
        SupervisorServer::new(self)
    }
}

#[tonic::async_trait]
impl Supervisor for ControlService {
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
        }))
    }

    async fn restart(
        &self,
        request: Request<RestartRequest>,
    ) -> Result<Response<RestartReply>, Status> {
        self.access.authorize(&request)?;
        if self.shutdown.requested().is_some() {
            return Err(Status::unavailable("the stack is shutting down"));
        }
        let name = request.into_inner().daemon;
        let slot = self.stack.slot(&name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "daemon: unknown daemon {name:?} (expected one of {})",
                securely_core::DAEMONS.join(", ")
            ))
        })?;
        match slot.restart().await {
            Ok(pid) => Ok(Response::new(RestartReply { pid })),
            Err(reason) => Err(Status::aborted(format!(
                "restart of {name} failed: {reason}"
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
