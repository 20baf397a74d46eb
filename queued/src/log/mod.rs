//! An append-only log of checksummed records with group commit: what makes the queue's
//! writes durable.
//!
//! - [`frame`]: one record on disk (length, CRC-32, sequence number, body);
//! - [`segments`]: the log's files, named by their first record;
//! - [`replay`]: recovery, which accepts exactly the records that hold, up to the first
//!   torn one, and cuts the rest off;
//! - [`writer`]: the thread that appends every waiting caller's record with one write and
//!   one `fdatasync`, and deletes segments a checkpoint covers.
//!
//! The log knows nothing of what its records mean: [`open`] hands the records after the
//! caller's checkpoint to the caller to re-apply, then starts the writer after the last
//! good one.

pub mod frame;
mod replay;
pub mod segments;
pub mod writer;

use std::path::Path;

use securely_core::durable::CommitError;

pub use frame::Lsn;
pub use replay::Recovered;
pub use writer::{LogHandle, OnDurable, PendingAppend, Writer};

/// Why the log could not be opened or replayed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log starts after the caller's checkpoint: records in between are missing.
    #[error(
        "the log starts at record {first} but the state stops at {checkpoint}: records in \
         between are missing"
    )]
    Gap {
        /// The caller's checkpoint.
        checkpoint: Lsn,
        /// The log's first record.
        first: Lsn,
    },
    /// The caller could not re-apply a record.
    #[error("replaying record {lsn}: {reason}")]
    Apply {
        /// The record.
        lsn: Lsn,
        /// Why.
        reason: String,
    },
}

impl LogError {
    /// A mapper from an I/O error while doing `what`.
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

/// Why an append was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// Writing or syncing failed (the process is exiting).
    #[error(transparent)]
    Failed(#[from] CommitError),
    /// The writer is not running (stopped, or its thread died).
    #[error("the log's writer has stopped")]
    Stopped,
    /// The record does not carry the next number.
    #[error("log record {lsn} appended out of order: the next is {expected}")]
    OutOfOrder {
        /// The number given.
        lsn: Lsn,
        /// The number expected.
        expected: Lsn,
    },
    /// The body is longer than a record may be.
    #[error("a log record of {0} bytes is over the limit of {max}", max = frame::MAX_BODY_LEN)]
    TooLarge(usize),
}

/// Opens the log in `dir` (creating it): replays every record after `checkpoint` through
/// `apply`, in order, then starts the writer after the last good record, starting new
/// segments past `segment_bytes` ([`writer::SEGMENT_BYTES`] in production).
///
/// A log that ends before `checkpoint` (the state was saved past what the log had synced:
/// records never acknowledged) is started afresh after the checkpoint.
pub fn open(
    dir: &Path,
    checkpoint: Lsn,
    segment_bytes: u64,
    apply: impl FnMut(Lsn, &[u8]) -> Result<(), LogError>,
) -> Result<(Writer, Recovered), LogError> {
    std::fs::create_dir_all(dir).map_err(LogError::io("creating the log's directory"))?;
    let mut recovered = replay::replay(dir, checkpoint, apply)?;
    let mut present = segments::list(dir).map_err(LogError::io("listing the log's segments"))?;
    if recovered.last < checkpoint {
        for segment in present.drain(..) {
            std::fs::remove_file(&segment.path)
                .map_err(LogError::io("removing a log segment behind the state"))?;
        }
        recovered.last = checkpoint;
        recovered.tail = None;
    }
    let file = match &recovered.tail {
        Some(tail) => {
            let file = segments::open_for_append(tail)
                .map_err(LogError::io("opening the log's last segment"))?;
            let len = file
                .metadata()
                .map_err(LogError::io("reading the log's last segment"))?
                .len();
            Some((file, len))
        }
        None => None,
    };
    let tail = writer::Tail {
        dir: dir.to_path_buf(),
        segments: present,
        file,
        last: recovered.last,
        segment_bytes,
    };
    let writer = Writer::start(tail).map_err(LogError::io("starting the log's writer"))?;
    Ok((writer, recovered))
}

#[cfg(test)]
mod tests;
