//! Group commit: one thread makes writes durable for every caller waiting at the time, and
//! keeps the durable watermark.
//!
//! sled does not group concurrent `flush()` calls (each costs about one disk write), so
//! callers do not flush: they apply their transaction, then call [`CommitHandle::request`]
//! and wait on the [`PendingCommit`]. The committer thread takes every request queued so
//! far, runs one [`DurableTree::commit`] (sled's flush and `fdatasync`) covering all their
//! writes, and answers them together; requests that arrive meanwhile form the next batch.
//!
//! Every request gets a sequence number, taken after the caller's write was applied. Once
//! a commit has succeeded the committer raises the durable watermark
//! ([`CommitHandle::durable`]) to the highest number it covered, so that every write whose
//! number is at most the watermark is on disk: the engine hands out only jobs whose write
//! is (see [`crate::engine`]). It then runs each request's `on_durable` action (wake-ups),
//! even when its caller has gone, and only then answers the callers.
//!
//! A failed commit answers its callers with the error, raises nothing, and exits the
//! process for a restart (see [`securely_core::durable`]): what it covered is never
//! acknowledged nor handed out.
//!
//! [`Committer::stop`] answers every request queued before it with one last commit: a write
//! whose commit was requested before the stop is made durable and answered, even when the
//! tree closes right after (see [`crate::engine::Engine::close`]).
//!
//! Measured on a 2-core VM (release, 64-byte jobs, 20k pushes over 64 streams): about
//! 5.5-8k pushes/s with or without the `fdatasync`, within the run-to-run noise, since
//! sled's flush already waits for the device (`sync_file_range`); one sequential client
//! sees p50 0.47 ms per push with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use securely_core::durable::{self, DurableTree};
use tokio::sync::{mpsc, oneshot};

/// Why writes could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The flush or the sync failed (the process is exiting).
    #[error(transparent)]
    Failed(#[from] durable::CommitError),
    /// The committer is not running (stopped, or its thread died).
    #[error("the committer has stopped")]
    Stopped,
}

/// Run on the committer thread once a request's writes are durable.
pub type OnDurable = Box<dyn FnOnce() + Send>;

type Waiter = oneshot::Sender<Result<(), CommitError>>;

/// One caller's request.
struct Request {
    seq: u64,
    waiter: Waiter,
    on_durable: Option<OnDurable>,
}

enum Message {
    Commit(Request),
    Stop,
}

/// The sequence numbers handed out and the durable watermark.
#[derive(Debug, Default)]
struct Sequence {
    /// The last number handed out.
    issued: AtomicU64,
    /// Every write numbered up to this is durable.
    durable: AtomicU64,
}

/// The committer thread.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Message>,
    sequence: Arc<Sequence>,
    thread: JoinHandle<()>,
}

/// Asks the committer to make writes durable.
#[derive(Debug, Clone)]
pub struct CommitHandle {
    tx: mpsc::UnboundedSender<Message>,
    sequence: Arc<Sequence>,
}

/// A commit asked for: resolves once the writes applied before the request are durable.
#[derive(Debug)]
pub struct PendingCommit {
    seq: u64,
    answer: oneshot::Receiver<Result<(), CommitError>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Commit(request) => write!(f, "Commit({})", request.seq),
            Message::Stop => f.write_str("Stop"),
        }
    }
}

impl Committer {
    /// Starts the committer for `tree`.
    pub fn start(tree: DurableTree) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sequence = Arc::new(Sequence::default());
        let thread = {
            let sequence = sequence.clone();
            std::thread::Builder::new()
                .name("queued-commit".into())
                .spawn(move || run(tree, &sequence, rx))?
        };
        Ok(Self {
            tx,
            sequence,
            thread,
        })
    }

    /// A handle for callers.
    pub fn handle(&self) -> CommitHandle {
        CommitHandle {
            tx: self.tx.clone(),
            sequence: self.sequence.clone(),
        }
    }

    /// Commits what is pending, stops the thread and waits for it (its tree handle is
    /// gone when this returns). Later commits fail with [`CommitError::Stopped`].
    pub async fn stop(self) {
        let _ = self.tx.send(Message::Stop);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the committer thread panicked"),
        }
    }
}

impl CommitHandle {
    /// Asks for every write applied before this call to be made durable, without waiting;
    /// `on_durable` runs once they are (not if the commit fails). The returned request's
    /// [`PendingCommit::seq`] is at most the watermark once it is durable.
    pub fn request(&self, on_durable: Option<OnDurable>) -> Result<PendingCommit, CommitError> {
        let seq = self.sequence.issued.fetch_add(1, Ordering::AcqRel) + 1;
        let (waiter, answer) = oneshot::channel();
        let request = Request {
            seq,
            waiter,
            on_durable,
        };
        self.tx
            .send(Message::Commit(request))
            .map_err(|_| CommitError::Stopped)?;
        Ok(PendingCommit { seq, answer })
    }

    /// The durable watermark: every write whose request number is at most this is on disk.
    pub fn durable(&self) -> u64 {
        self.sequence.durable.load(Ordering::Acquire)
    }
}

impl PendingCommit {
    /// This request's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), CommitError> {
        self.answer.await.unwrap_or(Err(CommitError::Stopped))
    }
}

fn run(mut tree: DurableTree, sequence: &Sequence, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut batch: Vec<Request> = Vec::new();
    let (mut commits, mut waiters) = (0u64, 0u64);
    loop {
        let mut stop = false;
        match rx.blocking_recv() {
            Some(Message::Commit(request)) => batch.push(request),
            Some(Message::Stop) | None => stop = true,
        }
        while let Ok(message) = rx.try_recv() {
            match message {
                Message::Commit(request) => batch.push(request),
                Message::Stop => stop = true,
            }
        }
        let result = tree.commit();
        commits += 1;
        waiters += batch.len() as u64;
        match &result {
            Ok(()) => {
                if let Some(highest) = batch.iter().map(|r| r.seq).max() {
                    sequence.durable.fetch_max(highest, Ordering::AcqRel);
                }
                for request in &mut batch {
                    if let Some(action) = request.on_durable.take() {
                        action();
                    }
                }
            }
            Err(error) => {
                for request in batch.drain(..) {
                    let _ = request.waiter.send(Err(CommitError::Failed(error.clone())));
                }
                // Nothing of this batch was handed out or acknowledged; restart from disk.
                durable::exit_for_restart("committing the queue's writes", error);
            }
        }
        for request in batch.drain(..) {
            let _ = request.waiter.send(Ok(()));
        }
        if stop {
            tracing::info!(commits, waiters, "committer stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(dir: &std::path::Path) -> (sled::Db, Committer) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let tree = DurableTree::open(db.clone(), dir).unwrap();
        (db, Committer::start(tree).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_are_answered_and_stop_refuses_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (db, committer) = start(dir.path());
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let db = db.clone();
            let handle = committer.handle();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &[][..]).unwrap();
                handle.request(None)?.wait().await
            }));
        }
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        let handle = committer.handle();
        // Asked before the stop: answered by its last commit.
        let before = handle.request(None).unwrap();
        committer.stop().await;
        assert!(before.wait().await.is_ok());
        assert!(matches!(handle.request(None), Err(CommitError::Stopped)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watermark_covers_a_request_before_its_action_and_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, committer) = start(dir.path());
        let handle = committer.handle();
        assert_eq!(handle.durable(), 0);
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let watching = handle.clone();
        let first = handle
            .request(Some(Box::new(move || {
                seen_tx.send(watching.durable()).unwrap();
            })))
            .unwrap();
        let seq = first.seq();
        // The caller may be gone: the action still runs.
        drop(first);
        let watermark = seen_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the action ran");
        assert!(watermark >= seq);
        let second = handle.request(None).unwrap();
        assert!(second.seq() > seq);
        let second_seq = second.seq();
        second.wait().await.unwrap();
        assert!(handle.durable() >= second_seq);
        committer.stop().await;
    }
}
