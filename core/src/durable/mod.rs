//! Commits that survive a power cut, for every daemon's sled tree.
//!
//! sled's `flush` alone survives SIGKILL but not a power cut: on Linux it writes with
//! `sync_file_range`, which neither flushes the drive's cache nor the file's metadata. A
//! [`DurableTree::commit`] is sled's flush followed by `fdatasync` of the tree's files
//! (its log, and the blob files sled writes for large values), so whatever a daemon
//! answers after it ("acknowledged") is on the disk and survives a power cut too.
//!
//! A failed commit is not retried and not undone: after a failed flush or fsync the kernel
//! may have dropped the dirty pages or marked them clean, so what is in memory can no
//! longer be trusted to reach the disk. The daemon acknowledges nothing of it and calls
//! [`exit_for_restart`] (status [`EXIT_COMMIT_FAILED`], EX_IOERR), so that the supervisor
//! restarts it from what the disk really holds. A write whose commit failed was never
//! acknowledged; after the restart it may or may not be there.
//!
//! Tests can slow down or fail the syncs of a debug build (see [`fault`]).

mod disk_sync;
pub mod fault;

use std::path::Path;
use std::sync::Arc;

use disk_sync::DiskSync;

/// The exit status after a failed commit (EX_IOERR from sysexits.h).
pub const EXIT_COMMIT_FAILED: i32 = 74;

/// Why writes could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled's flush failed.
    #[error("flushing the sled tree: {0}")]
    Flush(#[source] sled::Error),
    /// Syncing the tree's files to the disk failed.
    #[error("syncing the sled tree to disk: {0}")]
    Sync(#[source] Arc<std::io::Error>),
    /// Syncing a file the daemon writes itself (see [`sync_file`]) failed.
    #[error("syncing {what} to disk: {source}")]
    SyncFile {
        /// What the file holds.
        what: &'static str,
        /// The error.
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// A sled tree whose commits reach the disk.
#[derive(Debug)]
pub struct DurableTree {
    db: sled::Db,
    disk: DiskSync,
}

impl DurableTree {
    /// Takes `db`, opened from the directory `tree`, and syncs what sled wrote so far.
    pub fn open(db: sled::Db, tree: &Path) -> Result<Self, CommitError> {
        let disk = DiskSync::open(tree).map_err(|e| CommitError::Sync(Arc::new(e)))?;
        Ok(Self { db, disk })
    }

    /// The tree.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every write applied before this call durable: sled's flush, then
    /// `fdatasync` of the tree's files. On an error, see the module's doc: exit.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        self.db.flush().map_err(CommitError::Flush)?;
        self.disk.sync().map_err(|e| CommitError::Sync(Arc::new(e)))
    }
}

/// Syncs the data of `file`, which holds `what`, to the disk (`fdatasync`), as a commit
/// does: for daemons that write their own files beside their sled tree. Obeys the test
/// fault hook ([`fault`]).
pub fn sync_file(file: &std::fs::File, what: &'static str) -> Result<(), CommitError> {
    fault::before_sync()
        .and_then(|()| file.sync_data())
        .map_err(|e| CommitError::SyncFile {
            what,
            source: Arc::new(e),
        })
}

/// Ends the process after a failed commit of `what`, with [`EXIT_COMMIT_FAILED`].
pub fn exit_for_restart(what: &str, error: &CommitError) -> ! {
    tracing::error!(
        "{what}: {error}; exiting (status {EXIT_COMMIT_FAILED}) to restart from what the \
         disk holds"
    );
    std::process::exit(EXIT_COMMIT_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_reach_the_files_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let mut tree = DurableTree::open(db, dir.path()).unwrap();
            tree.db().insert("k", "v").unwrap();
            tree.commit().unwrap();
        }
        let db = crate::store::open_tree(dir.path(), crate::store::OPEN_DEADLINE).unwrap();
        assert_eq!(db.get("k").unwrap().unwrap(), "v");
    }
}
