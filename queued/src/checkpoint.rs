//! Checkpoints: make the sled tree durable up to a log record, then let the log drop the
//! segments before it, so that the log stays bounded while queued serves.
//!
//! Every [`CHECKPOINT_INTERVAL`], when records were appended since the last checkpoint,
//! the checkpointer reads the last record applied to the store, commits the tree (sled's
//! flush, then `fdatasync`, see [`securely_core::durable`]), which makes that record's
//! effects and everything before durable in the tree itself, and asks the log's writer to
//! delete the segments that record covers. Recovery then replays only the records after
//! the tree's checkpoint (see [`crate::log::open`]). The commit runs on the blocking pool,
//! off the engine's lock: operations go on meanwhile.
//!
//! A failed commit exits the process for a restart, as a failed sync of the log does
//! ([`securely_core::durable::exit_for_restart`]).

use std::sync::Arc;
use std::time::Duration;

use securely_core::durable::{self, DurableTree};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineError};
use crate::log::{LogHandle, Lsn};

/// How often the checkpointer looks for new records.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// The running checkpointer.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<Notify>,
    task: JoinHandle<DurableTree>,
}

impl Checkpointer {
    /// Starts checkpoints of `tree` for `engine`'s store and `log` on the current runtime.
    pub fn start(engine: Arc<Engine>, log: LogHandle, tree: DurableTree) -> Self {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(engine, log, tree, stop.clone()));
        Self { stop, task }
    }

    /// Stops the checkpointer and waits until it has let go of the tree.
    pub async fn stop(self) {
        self.stop.notify_one();
        if self.task.await.is_err() {
            tracing::error!("the checkpoint task panicked");
        }
    }
}

async fn run(
    engine: Arc<Engine>,
    log: LogHandle,
    mut tree: DurableTree,
    stop: Arc<Notify>,
) -> DurableTree {
    let mut checkpoint: Lsn = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            () = stop.notified() => return tree,
        }
        if log.durable() <= checkpoint {
            continue;
        }
        let applied = match engine.applied_lsn() {
            Ok(applied) => applied,
            Err(EngineError::ShuttingDown) => return tree,
            Err(e) => {
                tracing::error!("checkpoint: {e}");
                continue;
            }
        };
        let committed = tokio::task::spawn_blocking(move || {
            let result = tree.commit();
            (tree, result)
        })
        .await;
        let Ok((committed_tree, result)) = committed else {
            tracing::error!("the checkpoint's commit panicked");
            std::process::exit(durable::EXIT_COMMIT_FAILED);
        };
        tree = committed_tree;
        if let Err(error) = result {
            durable::exit_for_restart("checkpointing the queue's tree", &error);
        }
        log.compact_through(applied);
        checkpoint = applied;
        tracing::debug!(applied, "checkpoint");
    }
}
