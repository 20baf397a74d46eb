//! The supervisor's hand-over commands, as proxyd carries them out (see
//! [`securely_core::readiness`] for the protocol). The proxy serves HTTP from its routing
//! table throughout; only gRPC and the sled tree come and go.
//!
//! - [`HandOver::release`] (`RELEASE`): stop the gRPC server gracefully (calls in flight
//!   finish, bounded by the grace period; a fast shutdown request cuts them), close the
//!   site store completely ([`tenure::release`]), then `RELEASED=1`.
//! - [`HandOver::resume`] (`RESUME`, after a release: the new instance failed): reopen the
//!   tree and reload the sites, which republishes the routing table ([`tenure::reopen`]),
//!   start the gRPC server again on the same socket, then `READY=1`. A shutdown request
//!   meanwhile abandons the reopening.

use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use securely_core::daemon::Daemon;
use securely_core::rpc::RpcServer;
use securely_core::shutdown::ShutdownKind;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::control::{ControlError, status_line, stop_grpc};
use crate::store::StoreSetup;
use crate::tenure::{self, StoreSlot, TenureError};

/// What serving gRPC over the site store takes, once per tenure of the tree.
pub struct HandOver {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// The gRPC socket, kept to serve on it again (each server gets a duplicate).
    pub grpc: UnixListener,
    /// Where the admin service finds the site store.
    pub slot: Arc<StoreSlot>,
    /// What the site store is opened with.
    pub setup: StoreSetup,
    /// The HTTP listeners' addresses.
    pub http: Vec<SocketAddr>,
}

impl HandOver {
    /// Starts the gRPC server (`DaemonControl` and `ProxyAdmin`) on a duplicate of the
    /// gRPC socket.
    pub fn start_grpc(&self) -> Result<RpcServer, ControlError> {
        let listener = self.grpc.try_clone().map_err(ControlError::GrpcSocket)?;
        let mut listener_urls: Vec<String> =
            self.http.iter().map(|a| format!("tcp://{a}")).collect();
        listener_urls.push(format!("unix://{}", self.daemon.socket_path().display()));
        let routes = Routes::new(self.daemon.control_service(listener_urls).into_server())
            .add_service(
                AdminService::new(self.slot.clone(), self.daemon.access.clone()).into_server(),
            );
        Ok(RpcServer::start(listener, routes))
    }

    /// `RELEASE`: stops `grpc`, closes the site store, reports `RELEASED=1`.
    pub async fn release(&self, grpc: RpcServer) -> Result<(), ControlError> {
        let shutdown = &self.daemon.shutdown;
        tracing::info!("releasing the sled tree: stopping gRPC");
        let deadline = Instant::now() + self.daemon.settings.grace_period();
        stop_grpc(grpc, ShutdownKind::Graceful, shutdown, deadline).await;
        tenure::release(&self.slot, shutdown.wait_fast())
            .await
            .map_err(ControlError::Release)?;
        tracing::info!("sled tree released; still proxying HTTP");
        self.daemon.released();
        Ok(())
    }

    /// `RESUME`: reopens the tree, reloads the sites, serves gRPC again, reports
    /// `READY=1`.
    pub async fn resume(&self) -> Result<RpcServer, ControlError> {
        tracing::info!("resuming: reopening the sled tree");
        let daemon = self.daemon.clone();
        let reopening = tenure::reopen(&self.slot, self.setup.clone(), move || daemon.open_tree());
        let sites = tokio::select! {
            reopened = reopening => reopened.map_err(ControlError::Resume)?,
            _ = self.daemon.shutdown.wait() => {
                return Err(ControlError::Resume(TenureError::Interrupted));
            }
        };
        let grpc = self.start_grpc()?;
        let status = status_line(sites, &self.http, &self.daemon.socket_path());
        tracing::info!("resumed: {status}");
        self.daemon.ready(status);
        Ok(grpc)
    }
}
