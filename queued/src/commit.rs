//! Group commit: one thread makes writes durable for every caller waiting at the time.
//!
//! sled does not group concurrent `flush()` calls (each costs about one disk write), so
//! callers do not flush: they apply their transaction, then wait on
//! [`CommitHandle::request`] and wait on the [`PendingCommit`]. The committer thread takes
//! every request queued so far, runs one `flush` (and, with a [`DiskSync`], one
//! `fdatasync`) covering all their writes, and answers them together; requests that arrive
//! meanwhile form the next batch.
//!
//! [`Committer::stop`] answers every request queued before it with one last commit: a write
//! whose commit was requested before the stop is made durable and answered, even when the
//! tree closes right after (see [`crate::engine::Engine::close`]).

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::disk_sync::DiskSync;

/// Why writes could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// sled's flush failed.
    #[error("flushing the queue's tree: {0}")]
    Flush(String),
    /// Syncing the files to the disk failed.
    #[error("syncing the queue's tree to disk: {0}")]
    Sync(String),
    /// The committer is not running (stopped, or its thread died).
    #[error("the committer has stopped")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<(), CommitError>>;

enum Message {
    Commit(Waiter),
    Stop,
}

/// The committer thread.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Message>,
    thread: JoinHandle<()>,
}

/// Asks the committer to make writes durable.
#[derive(Debug, Clone)]
pub struct CommitHandle {
    tx: mpsc::UnboundedSender<Message>,
}

/// A commit asked for: resolves once the writes applied before the request are durable.
#[derive(Debug)]
pub struct PendingCommit(oneshot::Receiver<Result<(), CommitError>>);

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Commit(_) => "Commit",
            Message::Stop => "Stop",
        })
    }
}

impl Committer {
    /// Starts the committer for `db`, with a disk sync after each flush when given.
    pub fn start(db: sled::Db, disk: Option<DiskSync>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("queued-commit".into())
            .spawn(move || run(db, disk, rx))?;
        Ok(Self { tx, thread })
    }

    /// A handle for callers.
    pub fn handle(&self) -> CommitHandle {
        CommitHandle {
            tx: self.tx.clone(),
        }
    }

    /// Commits what is pending, stops the thread and waits for it (its `Db` handle is
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
    /// Asks for every write applied before this call to be made durable, without waiting.
    pub fn request(&self) -> Result<PendingCommit, CommitError> {
        let (waiter, answer) = oneshot::channel();
        self.tx
            .send(Message::Commit(waiter))
            .map_err(|_| CommitError::Stopped)?;
        Ok(PendingCommit(answer))
    }
}

impl PendingCommit {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), CommitError> {
        self.0.await.unwrap_or(Err(CommitError::Stopped))
    }
}

/// Exit status after a failed commit (EX_IOERR).
const EXIT_COMMIT_FAILED: i32 = 74;

fn run(db: sled::Db, mut disk: Option<DiskSync>, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut batch: Vec<Waiter> = Vec::new();
    let (mut commits, mut waiters) = (0u64, 0u64);
    loop {
        let mut stop = false;
        match rx.blocking_recv() {
            Some(Message::Commit(waiter)) => batch.push(waiter),
            Some(Message::Stop) | None => stop = true,
        }
        while let Ok(message) = rx.try_recv() {
            match message {
                Message::Commit(waiter) => batch.push(waiter),
                Message::Stop => stop = true,
            }
        }
        let result = commit(&db, disk.as_mut());
        commits += 1;
        waiters += batch.len() as u64;
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
        if let Err(e) = &result {
            // After a failed flush or fsync the kernel may have dropped the pages: what is
            // in memory can no longer be trusted to reach the disk. Exit, so that the
            // supervisor restarts queued from what really is on disk.
            tracing::error!("commit failed: {e}; exiting so that queued restarts from disk");
            std::process::exit(EXIT_COMMIT_FAILED);
        }
        if stop {
            tracing::info!(commits, waiters, "committer stopped");
            return;
        }
    }
}

fn commit(db: &sled::Db, disk: Option<&mut DiskSync>) -> Result<(), CommitError> {
    db.flush().map_err(|e| CommitError::Flush(e.to_string()))?;
    if let Some(disk) = disk {
        disk.sync().map_err(|e| CommitError::Sync(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_are_answered_and_stop_refuses_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let disk = DiskSync::open(dir.path()).unwrap();
        let committer = Committer::start(db.clone(), Some(disk)).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let db = db.clone();
            let handle = committer.handle();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &[][..]).unwrap();
                handle.request()?.wait().await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        let handle = committer.handle();
        // Asked before the stop: answered by its last commit.
        let before = handle.request().unwrap();
        committer.stop().await;
        assert_eq!(before.wait().await, Ok(()));
        assert_eq!(handle.request().unwrap_err(), CommitError::Stopped);
    }
}
