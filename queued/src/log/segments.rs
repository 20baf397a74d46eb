//! The log's files: segments named by the sequence number of their first record.
//!
//! A segment is `<first lsn, 20 digits>.log` in the log's directory, so the names sort in
//! log order. Only the last segment is ever appended to; a segment is created (and the
//! directory synced, so that the new name survives a power cut) before its first record
//! is written, and deleted only once every record in it is covered by a checkpoint.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::frame::Lsn;

/// The extension of segment files.
const EXTENSION: &str = "log";

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The sequence number of its first record.
    pub first: Lsn,
    /// Its path.
    pub path: PathBuf,
}

/// The path of the segment whose first record is `first`.
pub fn path_of(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{first:020}.{EXTENSION}"))
}

/// The segments in `dir`, in log order. Files with other names are left alone.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let first = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .filter(|stem| stem.len() == 20)
            .and_then(|stem| stem.parse::<Lsn>().ok());
        if let Some(first) = first {
            segments.push(Segment { first, path });
        }
    }
    segments.sort_by_key(|segment| segment.first);
    Ok(segments)
}

/// Creates the segment whose first record will be `first`, durably (the directory is
/// synced), and opens it for appending.
pub fn create(dir: &Path, first: Lsn) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path_of(dir, first))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Opens an existing segment for appending.
pub fn open_for_append(segment: &Segment) -> io::Result<File> {
    OpenOptions::new().append(true).open(&segment.path)
}

/// Syncs `dir`, so that files created or removed in it stay so after a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
