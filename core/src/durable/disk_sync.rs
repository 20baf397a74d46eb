//! Power-loss durability on top of sled's flush.
//!
//! On Linux sled's `flush()` writes its log with `pwrite` + `sync_file_range`: enough to
//! survive SIGKILL, not a power cut (no metadata, no drive cache flush); sled fsyncs only
//! from its background flusher. [`DiskSync::sync`], called after each flush (see
//! [`super::DurableTree::commit`]), adds `fdatasync` on our own read-only descriptor of
//! `<tree>/db` (never locked, so sled's `flock` is untouched). sled writes values too large for its log segments
//! (nodes over about 128 KiB, i.e. big payloads) as separate files under `<tree>/blobs`,
//! without syncing them: those that are new or have grown since the last sync are synced
//! too, and the directory when files appeared.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Syncs a sled tree's files to the disk.
#[derive(Debug)]
pub struct DiskSync {
    log: File,
    blobs_dir: PathBuf,
    /// Blob files already synced, with the length they had then.
    synced_blobs: HashMap<OsString, u64>,
}

impl DiskSync {
    /// Opens `<tree>/db` for syncing and syncs the tree's directory once, so that the
    /// files sled created are part of it.
    pub fn open(tree: &Path) -> io::Result<Self> {
        let log = File::open(tree.join("db"))?;
        File::open(tree)?.sync_all()?;
        let mut this = Self {
            log,
            blobs_dir: tree.join("blobs"),
            synced_blobs: HashMap::new(),
        };
        this.sync()?;
        Ok(this)
    }

    /// Syncs every byte sled has written (call after its `flush`).
    pub fn sync(&mut self) -> io::Result<()> {
        super::fault::before_sync()?;
        self.sync_blobs()?;
        self.log.sync_data()
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashMap::with_capacity(self.synced_blobs.len());
        let mut appeared = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // sled removes blobs it no longer needs; one gone meanwhile needs no sync.
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let previous = self.synced_blobs.get(&name).copied();
            if previous != Some(len) {
                // The length is read before the sync: a blob still being written is
                // synced again once it has grown.
                match File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                appeared |= previous.is_none();
            }
            present.insert(name, len);
        }
        if appeared {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_tree_with_and_without_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut sync = DiskSync::open(dir.path()).unwrap();
        db.insert("small", "v").unwrap();
        db.flush().unwrap();
        sync.sync().unwrap();
        // A value far above sled's blob threshold lands in <tree>/blobs.
        db.insert("big", vec![7u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        sync.sync().unwrap();
        assert!(!sync.synced_blobs.is_empty(), "no blob file was seen");
        let blobs = sync.synced_blobs.clone();
        sync.sync().unwrap();
        assert_eq!(sync.synced_blobs, blobs);
    }
}
