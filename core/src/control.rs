//! The `DaemonControl` service every daemon serves on its own socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use securely_proto::daemon::daemon_control_server::{DaemonControl, DaemonControlServer};
use securely_proto::daemon::{DaemonStatusReply, DaemonStatusRequest, DrainReply, DrainRequest};
use tonic::{Request, Response, Status};

use crate::rpc::Access;
use crate::shutdown::{Shutdown, ShutdownKind};

/// What a daemon reports about itself.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    /// Listening sockets, as `tcp://`, `udp://` or `unix://` URLs.
    pub listeners: Vec<String>,
    /// The sled tree's directory.
    pub tree: String,
}

/// The control service: status and drain.
#[derive(Debug, Clone)]
pub struct ControlService {
    info: Arc<DaemonInfo>,
    started: Instant,
    shutdown: Shutdown,
    access: Access,
    draining: Arc<AtomicBool>,
}

impl ControlService {
    /// A control service whose `Drain` pulls `shutdown`.
    pub fn new(info: DaemonInfo, shutdown: Shutdown, access: Access) -> Self {
        Self {
            info: Arc::new(info),
            started: Instant::now(),
            shutdown,
            access,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> DaemonControlServer<Self> {
        DaemonControlServer::new(self)
    }
}

#[tonic::async_trait]
impl DaemonControl for ControlService {
    async fn status(
        &self,
        _request: Request<DaemonStatusRequest>,
    ) -> Result<Response<DaemonStatusReply>, Status> {
        let draining = self.draining.load(Ordering::Relaxed) || self.shutdown.requested().is_some();
        Ok(Response::new(DaemonStatusReply {
            name: self.info.name.to_string(),
            state: if draining { "draining" } else { "ready" }.to_string(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            listeners: self.info.listeners.clone(),
            tree: self.info.tree.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn drain(&self, request: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        self.access.authorize(&request)?;
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!("drain requested over gRPC");
        self.shutdown.request(ShutdownKind::Graceful);
        Ok(Response::new(DrainReply {}))
    }
}
