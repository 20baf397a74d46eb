//! Recovery: reads the log back, up to the first record that does not hold.
//!
//! Records are read in order, segment after segment. A record is accepted only when its
//! checksum holds and its sequence number follows the one before; the first one that
//! fails either test (a write torn by a crash, or damage) ends the log: the segment is
//! cut back to the last good record, and any later segment is removed, so the next
//! append follows on from exactly what was accepted. Nothing the log acknowledged can be
//! beyond that point: a record is acknowledged only once it and every record before it
//! are on the disk.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::LogError;
use super::frame::{self, Lsn};
use super::segments::{self, Segment};

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The last accepted record's sequence number (0 for an empty log).
    pub last: Lsn,
    /// Records handed to the caller (those after its checkpoint).
    pub replayed: u64,
    /// Bytes cut off the end: a torn or damaged tail (0 after a clean stop).
    pub discarded_bytes: u64,
    /// The segment to append to, if any is left.
    pub tail: Option<Segment>,
}

/// Replays the log in `dir`: hands every accepted record after `checkpoint` to `apply`,
/// in order, and cuts off what follows the first record that does not hold.
///
/// `checkpoint` is the last record the caller's state already includes; the log must
/// reach at least that far unless it is empty from there on (compacted).
pub fn replay(
    dir: &Path,
    checkpoint: Lsn,
    mut apply: impl FnMut(Lsn, &[u8]) -> Result<(), LogError>,
) -> Result<Recovered, LogError> {
    let segments = segments::list(dir).map_err(LogError::io("listing the log's segments"))?;
    let mut recovered = Recovered {
        last: segments
            .first()
            .map_or(checkpoint, |s| s.first.saturating_sub(1)),
        replayed: 0,
        discarded_bytes: 0,
        tail: None,
    };
    if recovered.last > checkpoint {
        return Err(LogError::Gap {
            checkpoint,
            first: recovered.last + 1,
        });
    }
    for (index, segment) in segments.iter().enumerate() {
        // A segment that does not start right after the previous one is not part of this
        // log's sequence: it and what follows go.
        if segment.first != recovered.last + 1 {
            discard(dir, &segments[index..], &mut recovered)?;
            break;
        }
        let bytes = std::fs::read(&segment.path).map_err(LogError::io("reading a log segment"))?;
        let mut offset = 0;
        while offset < bytes.len() {
            match frame::decode(&bytes[offset..]) {
                Ok(record) if record.lsn == recovered.last + 1 => {
                    if record.lsn > checkpoint {
                        apply(record.lsn, record.body)?;
                        recovered.replayed += 1;
                    }
                    recovered.last = record.lsn;
                    offset += record.len;
                }
                _ => break,
            }
        }
        recovered.tail = Some(segment.clone());
        if offset < bytes.len() {
            recovered.discarded_bytes += (bytes.len() - offset) as u64;
            cut(segment, offset).map_err(LogError::io("cutting a torn log segment"))?;
            discard(dir, &segments[index + 1..], &mut recovered)?;
            break;
        }
    }
    Ok(recovered)
}

/// Removes `segments` (all past the end of the log), durably.
fn discard(dir: &Path, segments: &[Segment], recovered: &mut Recovered) -> Result<(), LogError> {
    if segments.is_empty() {
        return Ok(());
    }
    for segment in segments {
        let len = std::fs::metadata(&segment.path).map_or(0, |m| m.len());
        std::fs::remove_file(&segment.path).map_err(LogError::io("removing a log segment"))?;
        recovered.discarded_bytes += len;
    }
    segments::sync_dir(dir).map_err(LogError::io("syncing the log's directory"))
}

/// Cuts `segment` back to `len` bytes, durably.
fn cut(segment: &Segment, len: usize) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(&segment.path)?;
    file.set_len(len as u64)?;
    file.sync_all()
}
