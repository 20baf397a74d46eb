//! Opening a daemon's sled tree.
//!
//! sled lets one process hold a tree at a time and fails at once (never waits) while
//! another holds it. During a hand-over the old instance is still closing it, so opening
//! retries until a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long to keep retrying a tree that another process still holds.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between attempts to open a held tree.
const OPEN_RETRY_INTERVAL: Duration = Duration::from_millis(5);

/// Why a tree could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory could not be created.
    #[error("cannot create {path}: {reason}")]
    CreateDir {
        /// The tree's directory.
        path: String,
        /// The reason.
        reason: std::io::Error,
    },
    /// sled refused.
    #[error("cannot open sled tree {path}: {reason}")]
    Open {
        /// The tree's directory.
        path: String,
        /// The reason.
        reason: sled::Error,
    },
}

/// Opens (creating if needed) the sled tree at `path`, retrying while another process
/// still holds it, for at most `deadline`.
pub fn open_tree(path: &Path, deadline: Duration) -> Result<sled::Db, StoreError> {
    std::fs::create_dir_all(path).map_err(|reason| StoreError::CreateDir {
        path: path.display().to_string(),
        reason,
    })?;
    let give_up = Instant::now() + deadline;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(e) if is_held_elsewhere(&e) && Instant::now() < give_up => {
                std::thread::sleep(OPEN_RETRY_INTERVAL);
            }
            Err(reason) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason,
                });
            }
        }
    }
}

/// sled reports a held lock as an `Io` error whose message says so.
fn is_held_elsewhere(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_reopens_with_its_data_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree");
        let first = open_tree(&path, Duration::ZERO).unwrap();
        first.insert("k", "v").unwrap();
        first.flush().unwrap();
        // sled's lock is per process (flock on an fd): a second open in this process
        // succeeds, so the cross-process case is covered by the tests/ crate.
        drop(first);
        let again = open_tree(&path, OPEN_DEADLINE).unwrap();
        assert_eq!(again.get("k").unwrap().unwrap(), "v");
    }
}
