//! A tenure: one span during which this instance holds the queue's sled tree and serves
//! gRPC from it; [`QueueTenant`] is queued's part in the lifecycle driver
//! ([`securely_core::lifecycle`]), which does the rest (turn, gRPC, hand-over, stop).
//!
//! [`QueueTenant::open`] opens the tree (retrying while a previous holder lets go of it),
//! the power-loss sync, the store and the log (replaying the records the tree's checkpoint
//! does not cover) on the blocking pool, then starts the engine, the reaper and the
//! checkpointer. Everything is loaded from the tree afresh: a tenure after a hand-over
//! that failed sees what the other instance wrote. The log lives in the tree's directory
//! ([`LOG_DIR`]), so whoever holds the tree holds the log.
//!
//! A tenure ends for a shutdown or for the supervisor's `RELEASE`: [`QueueTenant::ending`]
//! pulls the tenure's own end switch (Reserve calls still waiting end at once,
//! UNAVAILABLE, nothing reserved), the driver stops the gRPC server (graceful: the calls in
//! flight finish, within the grace period), then [`QueueTenant::close`] stops the reaper
//! and the checkpointer and closes the engine, which lets no sled handle live on. A call that reaches the
//! engine during the end is never half done: its write is made durable and answered, or
//! it is refused (UNAVAILABLE) before it does anything (see [`crate::engine`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use securely_core::durable::DurableTree;
use securely_core::rpc::Access;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use securely_core::store::{OPEN_DEADLINE, open_tree};
use securely_core::tenure::{BoxError, CloseError, Tenant};
use tonic::service::Routes;

use crate::backoff::Backoff;
use crate::checkpoint::Checkpointer;
use crate::engine::Engine;
use crate::log::{self, LogError, Writer};
use crate::reaper::Reaper;
use crate::service::QueueService;
use crate::store::Store;
use crate::validate::Limits;

/// What every tenure needs and none holds the tree for: prepared once, before this
/// instance's turn.
#[derive(Debug)]
pub struct QueueTenant {
    /// The tree's directory.
    pub tree: PathBuf,
    /// The queue settings' defaults.
    pub limits: Limits,
    /// The retry backoff.
    pub backoff: Backoff,
    /// Who may make mutating calls.
    pub access: Access,
    /// The daemon's shutdown switch.
    pub shutdown: Shutdown,
    /// The gRPC socket, for the ready status.
    pub socket: PathBuf,
}

/// The log's directory inside the tree's.
pub const LOG_DIR: &str = "log";

/// The tree, opened, and its log replayed.
struct Opened {
    store: Store,
    tree: DurableTree,
    writer: Writer,
}

/// A tenure being served.
#[derive(Debug)]
pub struct Tenure {
    engine: Arc<Engine>,
    writer: Writer,
    reaper: Reaper,
    checkpointer: Checkpointer,
    end: Shutdown,
}

impl Tenant for QueueTenant {
    type Tenure = Tenure;

    async fn open(&mut self) -> Result<Tenure, BoxError> {
        let tree = self.tree.clone();
        let opened = tokio::task::spawn_blocking(move || open(&tree))
            .await
            .context("opening the queue's tree")??;
        let end = Shutdown::new();
        let log = opened.writer.handle();
        let engine = Arc::new(Engine::new(
            opened.store,
            log.clone(),
            self.backoff,
            end.clone(),
        ));
        let reaper = Reaper::start(engine.clone());
        let checkpointer = Checkpointer::start(engine.clone(), log, opened.tree);
        Ok(Tenure {
            engine,
            writer: opened.writer,
            reaper,
            checkpointer,
            end,
        })
    }

    fn routes(&self, tenure: &Tenure) -> Routes {
        let queue = QueueService::new(
            tenure.engine.clone(),
            self.limits,
            self.access.clone(),
            self.shutdown.clone(),
        );
        Routes::new(queue.into_server())
    }

    fn status(&self, _tenure: &Tenure) -> String {
        format!("serving on {}", self.socket.display())
    }

    fn ending(&self, tenure: &Tenure) {
        tenure.end.request(ShutdownKind::Graceful);
    }

    async fn close(
        &mut self,
        tenure: Tenure,
        _cut_short: impl Future<Output = ()>,
    ) -> Result<(), CloseError> {
        tenure.end.request(ShutdownKind::Graceful);
        tenure.reaper.stop().await;
        tenure.checkpointer.stop().await;
        tenure
            .engine
            .close(tenure.writer)
            .await
            .context("flushing the queue's tree")
            .map_err(|e| CloseError::Failed(e.into()))?;
        tracing::info!("closed the queue's tree");
        Ok(())
    }
}

/// Opens the tree, the power-loss sync, the store and the log, replaying it.
fn open(tree: &std::path::Path) -> anyhow::Result<Opened> {
    let db = open_tree(tree, OPEN_DEADLINE)?;
    let durable = DurableTree::open(db.clone(), tree)
        .with_context(|| format!("syncing {}", tree.display()))?;
    let store = Store::open(db).with_context(|| format!("opening {}", tree.display()))?;
    let checkpoint = store
        .applied_lsn()
        .with_context(|| format!("reading {}", tree.display()))?;
    let replay = |lsn, body: &[u8]| {
        store.replay(lsn, body).map_err(|e| LogError::Apply {
            lsn,
            reason: e.to_string(),
        })
    };
    let log_dir = tree.join(LOG_DIR);
    let (writer, recovered) =
        log::open(&log_dir, checkpoint, log::writer::SEGMENT_BYTES, replay)
            .with_context(|| format!("replaying the queue's log in {}", log_dir.display()))?;
    if recovered.discarded_bytes > 0 {
        tracing::warn!(
            bytes = recovered.discarded_bytes,
            last = recovered.last,
            "cut a torn or damaged end off the queue's log (never acknowledged)"
        );
    }
    tracing::info!(
        tree = %tree.display(),
        checkpoint,
        replayed = recovered.replayed,
        last = recovered.last,
        "opened the queue's tree"
    );
    Ok(Opened {
        store,
        tree: durable,
        writer,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use std::os::unix::net::UnixListener;

    use securely_core::rpc::RpcServer;
    use securely_proto::queue::queue_client::QueueClient;
    use securely_proto::queue::{PushRequest, ReserveRequest};
    use tokio::time::Instant;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;
    use crate::engine::now_ms;
    use crate::store::NewJob;

    fn tenant(dir: &Path) -> (QueueTenant, UnixListener) {
        let socket = dir.join("queued.sock");
        let tenant = QueueTenant {
            tree: dir.join("tree"),
            limits: Limits::from_settings(&Default::default()),
            backoff: Backoff::new(0, 0),
            access: Access::new(None, None),
            shutdown: Shutdown::new(),
            socket: socket.clone(),
        };
        (tenant, securely_core::bind::unix(&socket).unwrap())
    }

    /// Serves `tenure` as the lifecycle driver does.
    fn serve(tenant: &QueueTenant, tenure: &Tenure, listener: &UnixListener) -> RpcServer {
        RpcServer::start(listener.try_clone().unwrap(), tenant.routes(tenure))
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
        let (mut tenant, listener) = tenant(dir.path());
        let tree = tenant.tree.clone();
        let tenure = tenant.open().await.unwrap();
        let server = serve(&tenant, &tenure, &listener);
        assert!(
            !tree_is_free(&tree, Duration::ZERO),
            "a serving tenure holds the tree"
        );
        let mut queue = client(dir.path()).await;
        queue.push(push("q", b"first")).await.unwrap();
        let mut waiting = queue.clone();
        let waiter = tokio::spawn(async move { waiting.reserve(reserve("empty", 60)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;

        let deadline = Instant::now() + Duration::from_secs(5);
        let release = async {
            tenant.ending(&tenure);
            server.stop_within(deadline, std::future::pending()).await;
            tenant.close(tenure, std::future::pending()).await
        };
        tokio::time::timeout(Duration::from_secs(3), release)
            .await
            .expect("the release did not wait for the long poll")
            .unwrap();
        let refused = waiter.await.unwrap().unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("handing over"), "{refused:?}");
        assert!(
            tree_is_free(&tree, LINGER),
            "a sled handle outlived the release"
        );

        // The next holder writes meanwhile...
        {
            let db = open_tree(&tree, LINGER).unwrap();
            let store = Store::open(db).unwrap();
            let now = now_ms();
            let job = NewJob {
                queue: "q",
                payload: b"second",
                available_at_ms: now,
                max_tries: 1,
            };
            let (_, steps) = store.plan_push(job, now).unwrap();
            store
                .apply(store.applied_lsn().unwrap() + 1, &steps)
                .unwrap();
            store.flush().unwrap();
        }
        // ...and the next tenure (a resume) serves on the same socket from the tree.
        let tenure = tenant.open().await.unwrap();
        let server = serve(&tenant, &tenure, &listener);
        let mut queue = client(dir.path()).await;
        for expected in [&b"first"[..], b"second"] {
            let job = queue.reserve(reserve("q", 0)).await.unwrap().into_inner();
            assert_eq!(job.payload, expected);
        }
        tenant.ending(&tenure);
        server.abort();
        tenant.close(tenure, async {}).await.unwrap();
        assert!(tree_is_free(&tree, LINGER));
    }
}
