//! dnsd's control plane: the record store's sled tree and the gRPC server (`DnsAdmin`,
//! `DaemonControl`), which a hand-over moves together while DNS (the data plane) goes on
//! answering from the in-memory records.
//!
//! The store starts detached (it holds no tree); [`attach`] opens the tree and loads the
//! records, then [`ControlPlane::serve`] starts gRPC and reports ready. From there the
//! supervisor's commands move the plane:
//! - `RELEASE` while serving: stop gRPC (calls in flight finish, within the grace
//!   period; a fast shutdown request cuts them short), detach the tree (flush, drop every
//!   sled handle, waiting for a write still running), report `RELEASED=1`;
//! - `RESUME` while released: reopen the tree, reload the records and the serial from it
//!   (the instance that failed to take over may have changed them), start gRPC again on
//!   the same socket, report ready.
//!
//! A release that cannot flush, or a resume that cannot open the tree, is an error: the
//! daemon exits non-zero.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::Context;
use securely_core::daemon::Daemon;
use securely_core::readiness::Command;
use securely_core::rpc::RpcServer;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::record_spec::ZoneNames;
use crate::records::RecordStore;

/// How dnsd describes itself in its ready status.
pub struct Summary {
    /// The zone's apex.
    pub apex: String,
    /// The DNS sockets, as `udp://ADDR` and `tcp://ADDR`.
    pub listeners: Vec<String>,
    /// Where other names go.
    pub forwarding: String,
}

/// The record store's tree and the gRPC server over it.
pub struct ControlPlane {
    store: Arc<RecordStore>,
    names: ZoneNames,
    /// The gRPC socket, kept so that gRPC can start again after a release: each server
    /// runs on a clone.
    listener: UnixListener,
    /// The running gRPC server; `None` before serving and while released.
    grpc: Option<RpcServer>,
    summary: Summary,
}

impl ControlPlane {
    /// A plane over `store` (attached) for the zone `names`, serving gRPC on `listener`.
    pub fn new(
        store: Arc<RecordStore>,
        names: ZoneNames,
        listener: UnixListener,
        summary: Summary,
    ) -> Self {
        Self {
            store,
            names,
            listener,
            grpc: None,
            summary,
        }
    }

    /// Starts the gRPC server and reports ready.
    pub fn serve(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        let admin = AdminService::new(
            self.store.clone(),
            self.names.clone(),
            daemon.settings.dns.ttl,
            daemon.access.clone(),
        );
        let routes = Routes::new(admin.into_server()).add_service(
            daemon
                .control_service(self.summary.listeners.clone())
                .into_server(),
        );
        let listener = self
            .listener
            .try_clone()
            .context("sharing the gRPC socket")?;
        self.grpc = Some(RpcServer::start(listener, routes));
        let status = self.status();
        tracing::info!("{status}");
        daemon.ready(status);
        Ok(())
    }

    /// Resolves if the gRPC server ends by itself (an error); pends while there is none.
    pub async fn ended(&mut self) -> String {
        match self.grpc.as_mut() {
            Some(grpc) => grpc.ended().await,
            None => std::future::pending().await,
        }
    }

    /// Carries out a hand-over command; one that does not fit the state is ignored.
    pub async fn obey(&mut self, daemon: &Daemon, command: Command) -> anyhow::Result<()> {
        match (command, self.grpc.take()) {
            (Command::Release, Some(grpc)) => self.release(daemon, grpc).await,
            (Command::Resume, None) => self.resume(daemon).await,
            (command, grpc) => {
                self.grpc = grpc;
                let state = if self.grpc.is_some() {
                    "serving"
                } else {
                    "released"
                };
                tracing::warn!(?command, state, "hand-over command ignored");
                Ok(())
            }
        }
    }

    /// Stops accepting gRPC calls and lets the calls in flight finish (until
    /// `deadline`); a fast request meanwhile cuts them short. Nothing to do while
    /// released.
    pub async fn stop(&mut self, daemon: &Daemon, deadline: Instant) {
        if let Some(grpc) = self.grpc.take() {
            tracing::info!(calls = grpc.calls_in_flight(), "stopping gRPC");
            grpc.stop_within(deadline, daemon.shutdown.wait_fast())
                .await;
        }
    }

    /// Stops gRPC at once, cutting calls in flight.
    pub fn abort(&mut self) {
        if let Some(grpc) = self.grpc.take() {
            grpc.abort();
        }
    }

    /// `RELEASE`: gRPC stops, the tree closes, DNS goes on from memory.
    async fn release(&mut self, daemon: &Daemon, grpc: RpcServer) -> anyhow::Result<()> {
        tracing::info!(
            calls = grpc.calls_in_flight(),
            "releasing the record store: stopping gRPC"
        );
        let deadline = Instant::now() + daemon.settings.grace_period();
        grpc.stop_within(deadline, daemon.shutdown.wait_fast())
            .await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.detach())
            .await
            .context("releasing the record store")?
            .context("flushing the record store to release it")?;
        tracing::info!(
            records = self.store.len(),
            "record store released; answering DNS from memory"
        );
        daemon.released();
        Ok(())
    }

    /// `RESUME`: the tree reopens, the records reload, gRPC serves again.
    async fn resume(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        tracing::info!("the hand-over failed; resuming");
        if attach(daemon, &self.store).await.context("resuming")? {
            self.serve(daemon)?;
        }
        Ok(())
    }

    fn status(&self) -> String {
        let Summary {
            apex,
            listeners,
            forwarding,
        } = &self.summary;
        format!(
            "serving {apex} on {}; {} explicit records; {forwarding}",
            listeners.join(" "),
            self.store.len()
        )
    }
}

/// Opens the sled tree (retrying while a previous process still lets go of it) and
/// attaches it to `store`, loading the records. `false` when a shutdown request came
/// first: the opening is abandoned.
pub async fn attach(daemon: &Daemon, store: &Arc<RecordStore>) -> anyhow::Result<bool> {
    let path = daemon.tree_path();
    tracing::info!(path = %path.display(), "opening the record store");
    let store = store.clone();
    let opening = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let db = securely_core::store::open_tree(&path, securely_core::store::OPEN_DEADLINE)?;
        store.attach(db, &path).context("loading the records")
    });
    tokio::select! {
        opened = opening => {
            opened.context("opening the record store")??;
            Ok(true)
        }
        kind = daemon.shutdown.wait() => {
            tracing::info!(?kind, "asked to stop while opening the record store");
            Ok(false)
        }
    }
}
