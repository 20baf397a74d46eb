//! A tenure: one span during which this instance holds the queue's sled tree and serves
//! gRPC from it.
//!
//! [`Tenure::open`] opens the tree (retrying while a previous holder lets go of it), the
//! power-loss sync and the store, then starts the committer thread, the engine, the reaper
//! and the gRPC server on a clone of the daemon's listener (the listener itself stays with
//! the daemon, so a later tenure serves on the same socket). Everything is loaded from the
//! tree afresh: a tenure after a hand-over that failed sees what the other instance wrote.
//!
//! [`Tenure::end`] ends it, for a shutdown or for the supervisor's `RELEASE`: it pulls the
//! tenure's own end switch (Reserve calls still waiting end at once, UNAVAILABLE, nothing
//! reserved), stops the gRPC server (graceful: the calls in flight finish, within the
//! deadline), stops the reaper and closes the engine, which lets no sled handle live on.
//! A call that reaches the engine during the end is never half done: its write is made
//! durable and answered, or it is refused (UNAVAILABLE) before it does anything (see
//! [`crate::engine`]).

use std::future::Future;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use securely_core::control::ControlService;
use securely_core::durable::DurableTree;
use securely_core::rpc::{Access, RpcServer};
use securely_core::shutdown::{Shutdown, ShutdownKind};
use securely_core::store::{OPEN_DEADLINE, open_tree};
use tokio::time::Instant;
use tonic::service::Routes;

use crate::backoff::Backoff;
use crate::commit::Committer;
use crate::engine::Engine;
use crate::reaper::Reaper;
use crate::service::QueueService;
use crate::store::Store;
use crate::validate::Limits;

/// What every tenure needs and none holds the tree for: prepared once, before this
/// instance's turn.
#[derive(Debug)]
pub struct Prepared {
    /// The tree's directory.
    pub tree: PathBuf,
    /// The gRPC listener; each tenure serves on a clone.
    pub listener: UnixListener,
    /// The queue settings' defaults.
    pub limits: Limits,
    /// The retry backoff.
    pub backoff: Backoff,
    /// Who may make mutating calls.
    pub access: Access,
    /// The `DaemonControl` service.
    pub control: ControlService,
    /// The daemon's shutdown switch.
    pub shutdown: Shutdown,
}

/// The tree, opened.
struct Opened {
    store: Store,
    tree: DurableTree,
}

/// A tenure being served.
#[derive(Debug)]
pub struct Tenure {
    server: RpcServer,
    engine: Arc<Engine>,
    committer: Committer,
    reaper: Reaper,
    end: Shutdown,
}

impl Tenure {
    /// Opens the tree and serves from it (the caller then reports readiness). Blocks
    /// while a previous holder lets go of the tree (up to [`OPEN_DEADLINE`]); call it on
    /// the multi-thread runtime.
    pub async fn open(prepared: &Prepared) -> anyhow::Result<Self> {
        let listener = prepared
            .listener
            .try_clone()
            .context("cloning the gRPC listener")?;
        let opened = tokio::task::block_in_place(|| open(prepared))?;
        let committer = Committer::start(opened.tree).context("starting the committer thread")?;
        let end = Shutdown::new();
        let engine = Arc::new(Engine::new(
            opened.store,
            committer.handle(),
            prepared.backoff,
            end.clone(),
        ));
        let reaper = Reaper::start(engine.clone());
        let queue = QueueService::new(
            engine.clone(),
            prepared.limits,
            prepared.access.clone(),
            prepared.shutdown.clone(),
        );
        let routes =
            Routes::new(queue.into_server()).add_service(prepared.control.clone().into_server());
        let server = RpcServer::start(listener, routes);
        Ok(Self {
            server,
            engine,
            committer,
            reaper,
            end,
        })
    }

    /// Resolves if the gRPC server ends by itself (an error: it should run until the
    /// tenure ends). Only [`ShutdownKind::Fast`] may end the tenure after that.
    pub async fn server_ended(&mut self) -> String {
        self.server.ended().await
    }

    /// Ends the tenure: waiting Reserve calls end at once; the gRPC server stops (graceful:
    /// calls in flight finish until `deadline`, or until `cut_short` resolves; fast: at
    /// once); then the tree is flushed and closed, with no sled handle left.
    pub async fn end(
        self,
        kind: ShutdownKind,
        deadline: Instant,
        cut_short: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.end.request(kind);
        match kind {
            ShutdownKind::Graceful => self.server.stop_within(deadline, cut_short).await,
            ShutdownKind::Fast => self.server.abort(),
        }
        self.reaper.stop().await;
        self.engine
            .close(self.committer)
            .await
            .context("flushing the queue's tree")?;
        tracing::info!("closed the queue's tree");
        Ok(())
    }
}

/// Opens the tree, the power-loss sync and the store.
fn open(prepared: &Prepared) -> anyhow::Result<Opened> {
    let tree = &prepared.tree;
    let db = open_tree(tree, OPEN_DEADLINE)?;
    let durable = DurableTree::open(db.clone(), tree)
        .with_context(|| format!("syncing {}", tree.display()))?;
    let store = Store::open(db).with_context(|| format!("opening {}", tree.display()))?;
    tracing::info!(tree = %tree.display(), "opened the queue's tree");
    Ok(Opened {
        store,
        tree: durable,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use securely_core::control::DaemonInfo;
    use securely_proto::queue::queue_client::QueueClient;
    use securely_proto::queue::{PushRequest, ReserveRequest};
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;
    use crate::engine::now_ms;
    use crate::store::NewJob;

    fn prepared(dir: &Path) -> Prepared {
        let socket = dir.join("queued.sock");
        let access = Access::new(None, None);
        let shutdown = Shutdown::new();
        let info = DaemonInfo {
            name: "queued",
            listeners: vec![],
            tree: String::new(),
        };
        Prepared {
            tree: dir.join("tree"),
            listener: securely_core::bind::unix(&socket).unwrap(),
            limits: Limits::from_settings(&Default::default()),
            backoff: Backoff::new(0, 0),
            control: ControlService::new(info, shutdown.clone(), access.clone()),
            access,
            shutdown,
        }
    }

    async fn client(dir: &Path) -> QueueClient<Channel> {
        let channel = securely_core::rpc::connect(&dir.join("queued.sock"))
            .await
            .unwrap();
        QueueClient::new(channel)
    }

    fn push(queue: &str, payload: &[u8]) -> PushRequest {
        PushRequest {
            queue: queue.into(),
            payload: payload.to_vec(),
            ..Default::default()
        }
    }

    fn reserve(queue: &str, wait_seconds: u64) -> ReserveRequest {
        ReserveRequest {
            queue: queue.into(),
            wait_seconds,
            ..Default::default()
        }
    }

    /// Whether sled can open the tree (its lock is per open file, so this holds within
    /// one process too), retrying for `within`: sled's I/O threads let go of the file a
    /// moment after the last handle is dropped.
    fn tree_is_free(tree: &Path, within: Duration) -> bool {
        open_tree(tree, within).is_ok()
    }

    /// How long sled's I/O threads may hold the tree after its last handle is gone.
    const LINGER: Duration = Duration::from_secs(2);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_ends_waits_and_frees_the_tree_and_the_next_tenure_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = prepared(dir.path());
        let tenure = Tenure::open(&prepared).await.unwrap();
        assert!(
            !tree_is_free(&prepared.tree, Duration::ZERO),
            "a serving tenure holds the tree"
        );
        let mut queue = client(dir.path()).await;
        queue.push(push("q", b"first")).await.unwrap();
        let mut waiting = queue.clone();
        let waiter = tokio::spawn(async move { waiting.reserve(reserve("empty", 60)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;

        let deadline = Instant::now() + Duration::from_secs(5);
        tokio::time::timeout(
            Duration::from_secs(3),
            tenure.end(ShutdownKind::Graceful, deadline, std::future::pending()),
        )
        .await
        .expect("the release did not wait for the long poll")
        .unwrap();
        let refused = waiter.await.unwrap().unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("handing over"), "{refused:?}");
        assert!(
            tree_is_free(&prepared.tree, LINGER),
            "a sled handle outlived the release"
        );

        // The next holder writes meanwhile...
        {
            let db = open_tree(&prepared.tree, LINGER).unwrap();
            let store = Store::open(db).unwrap();
            let now = now_ms();
            let job = NewJob {
                queue: "q",
                payload: b"second",
                available_at_ms: now,
                max_tries: 1,
            };
            store.push(job, now).unwrap();
            store.flush().unwrap();
        }
        // ...and the next tenure (a resume) serves on the same socket from the tree.
        let tenure = Tenure::open(&prepared).await.unwrap();
        let mut queue = client(dir.path()).await;
        for expected in [&b"first"[..], b"second"] {
            let job = queue.reserve(reserve("q", 0)).await.unwrap().into_inner();
            assert_eq!(job.payload, expected);
        }
        tenure
            .end(ShutdownKind::Fast, Instant::now(), std::future::pending())
            .await
            .unwrap();
        assert!(tree_is_free(&prepared.tree, LINGER));
    }
}
