//! The explicit records, kept in dnsd's sled tree and mirrored in memory for queries.
//!
//! One sled key per record, `record\0<name>\0<TYPE>\0<value>`, holding the bincode form
//! of its [`RecordSpec`]; the zone's SOA serial sits under its own key and moves with
//! every change. Writers are serialised, apply one atomic batch, commit it (sled's flush
//! and `fdatasync`, see [`securely_core::durable`]), and only then update the in-memory
//! index that queries read, so an acknowledged change survives a crash and a power cut
//! and is visible at once. A commit that fails ends dnsd (status 74) before the index
//! changes or the caller is answered: memory can no longer be trusted to reach the disk,
//! so the supervisor restarts dnsd from what the disk holds, where the change (one
//! batch) is wholly there or absent.
//!
//! For a hand-over the store can let go of its tree while it keeps answering: [`detach`]
//! flushes the tree and drops every sled handle (so that another process may open it),
//! after which lookups are served from the index unchanged and changes are refused with
//! [`StoreError::Detached`]. [`attach`] takes a tree (again) and reloads the index and the
//! serial from it, since another instance may have changed it meanwhile. The tree sits
//! under the writers' lock, so a detach waits for a change in progress and no handle
//! outlives it.
//!
//! [`detach`]: RecordStore::detach
//! [`attach`]: RecordStore::attach

use std::collections::HashMap;
use std::path::Path;
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use hickory_proto::rr::{LowerName, RData};
use securely_core::durable::{self, CommitError, DurableTree};

use crate::record_spec::{InvalidArgument, RecordKind, RecordSpec, ZoneNames, owner_name};

/// Prefix of every record key.
const RECORD_PREFIX: &[u8] = b"record\0";
/// Key of the zone's SOA serial (big-endian u32).
const SERIAL_KEY: &[u8] = b"zone-serial";
/// The serial of a zone nobody has changed yet.
const FIRST_SERIAL: u32 = 1;

/// A key and its new value (`None` removes the key).
type Change = (Vec<u8>, Option<Vec<u8>>);

/// Why the store refused or failed a change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change contradicts records already set (a CNAME next to other data).
    #[error("{0}")]
    Conflict(String),
    /// sled failed.
    #[error("record store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// A stored record is no longer valid.
    #[error("stored record: {0}")]
    Invalid(#[from] InvalidArgument),
    /// The tree's files could not be synced when attaching it.
    #[error("record store: {0}")]
    Sync(#[from] CommitError),
    /// The tree is detached (handed over to another dnsd instance): records are served
    /// but cannot change.
    #[error("the record store is closed for a hand-over to another dnsd instance; try again")]
    Detached,
}

/// One explicit record as queries use it.
#[derive(Debug, Clone)]
pub struct ExplicitRecord {
    /// The type.
    pub kind: RecordKind,
    /// Seconds; 0 follows the configured default.
    pub ttl: u32,
    /// The data to serve.
    pub rdata: RData,
}

/// The explicit records of the local zone.
pub struct RecordStore {
    /// The sled tree (`None` while detached). Its lock serialises writers so that sled
    /// and the index change together.
    tree: Mutex<Option<DurableTree>>,
    /// What a stored record must be valid under to be served.
    names: ZoneNames,
    index: RwLock<Index>,
    /// How many of the next detaching flushes fail, to test what a failing disk does.
    #[cfg(test)]
    failing_flushes: AtomicUsize,
}

#[derive(Default)]
struct Index {
    by_name: HashMap<LowerName, Vec<Entry>>,
    serial: u32,
}

#[derive(Clone)]
struct Entry {
    spec: RecordSpec,
    rdata: RData,
}

impl RecordStore {
    /// A store without a tree yet: it serves no records and refuses changes until
    /// [`RecordStore::attach`].
    pub fn detached(names: &ZoneNames) -> Self {
        Self {
            tree: Mutex::new(None),
            names: names.clone(),
            index: RwLock::new(Index {
                serial: FIRST_SERIAL,
                ..Index::default()
            }),
            #[cfg(test)]
            failing_flushes: AtomicUsize::new(0),
        }
    }

    /// A store attached to `db`, opened from `tree` (see [`RecordStore::attach`]).
    #[cfg(test)]
    pub fn open(db: sled::Db, tree: &Path, names: &ZoneNames) -> Result<Self, StoreError> {
        let store = Self::detached(names);
        store.attach(db, tree)?;
        Ok(store)
    }

    /// Takes `db`, opened from the directory `path`, as the tree and replaces the index
    /// and the serial with what it holds (a tree attached before, if any, is closed).
    /// Records that are not valid under the zone's names (the TLD changed since they were
    /// set, or the entry is damaged) are logged and left in the tree, unserved. If `db`
    /// cannot be read or synced, it is closed again and the store is left as it was.
    pub fn attach(&self, db: sled::Db, path: &Path) -> Result<(), StoreError> {
        let mut tree = self.lock_tree();
        let index = load(&db, &self.names)?;
        let durable = DurableTree::open(db, path)?;
        *self.write_index() = index;
        *tree = Some(durable);
        Ok(())
    }

    /// Flushes the tree and closes it (every sled handle is dropped, so another process
    /// may open it), waiting for a change in progress. The records are still served from
    /// memory; changes fail with [`StoreError::Detached`] until the next
    /// [`RecordStore::attach`]. The tree is closed even when the flush fails (then that
    /// error is returned). Detaching a detached store does nothing.
    pub fn detach(&self) -> Result<(), StoreError> {
        let Some(durable) = self.lock_tree().take() else {
            return Ok(());
        };
        let flushed = self.flush_to_disk(durable.db());
        drop(durable);
        Ok(flushed?)
    }

    /// Adds `spec`, replacing a record of the same name, type and value. A CNAME replaces
    /// the name's previous CNAME; a CNAME and other data cannot share a name (RFC 1034
    /// section 3.6.2). Returns once the change is committed.
    pub fn set(&self, spec: RecordSpec) -> Result<(), StoreError> {
        let entry = Entry {
            rdata: spec.rdata()?,
            spec,
        };
        let owner = entry.spec.owner()?;
        let mut tree = self.lock_tree();
        let durable = tree.as_mut().ok_or(StoreError::Detached)?;
        let existing = self.read_index().records_of(&owner);
        let replaced: Vec<&RecordSpec> = match entry.spec.kind {
            RecordKind::Cname => {
                if let Some(other) = existing.iter().find(|e| e.kind != RecordKind::Cname) {
                    return Err(StoreError::Conflict(format!(
                        "{} already has {} records; a CNAME cannot share a name with other data \
                         (unset them first)",
                        entry.spec.name,
                        other.kind.as_str()
                    )));
                }
                existing.iter().collect()
            }
            _ => {
                if existing.iter().any(|e| e.kind == RecordKind::Cname) {
                    return Err(StoreError::Conflict(format!(
                        "{} is a CNAME; other records cannot share its name (unset the CNAME first)",
                        entry.spec.name
                    )));
                }
                existing
                    .iter()
                    .filter(|e| e.kind == entry.spec.kind && e.value == entry.spec.value)
                    .collect()
            }
        };
        let mut changes: Vec<Change> = replaced.iter().map(|old| (record_key(old), None)).collect();
        changes.push((record_key(&entry.spec), Some(encode(&entry.spec)?)));
        let serial = self.commit(durable, changes)?;

        let mut index = self.write_index();
        index.remove(&owner, |e| replaced.iter().any(|old| **old == e.spec));
        index.insert(entry);
        index.serial = serial;
        Ok(())
    }

    /// Removes the records of `name` (canonical form) of one type, or of every type.
    /// Returns how many were removed; once the change is committed.
    pub fn unset(&self, name: &str, kind: Option<RecordKind>) -> Result<u32, StoreError> {
        let owner = owner_name(name)?;
        let mut tree = self.lock_tree();
        let durable = tree.as_mut().ok_or(StoreError::Detached)?;
        let removed: Vec<RecordSpec> = self
            .read_index()
            .records_of(&owner)
            .into_iter()
            .filter(|spec| kind.is_none_or(|k| spec.kind == k))
            .collect();
        if removed.is_empty() {
            return Ok(0);
        }
        let changes = removed
            .iter()
            .map(|spec| (record_key(spec), None))
            .collect();
        let serial = self.commit(durable, changes)?;

        let mut index = self.write_index();
        index.remove(&owner, |e| removed.contains(&e.spec));
        index.serial = serial;
        Ok(u32::try_from(removed.len()).unwrap_or(u32::MAX))
    }

    /// Every served record, ordered by name, type and value.
    pub fn list(&self) -> Vec<RecordSpec> {
        let mut all: Vec<RecordSpec> = self
            .read_index()
            .by_name
            .values()
            .flatten()
            .map(|e| e.spec.clone())
            .collect();
        all.sort_by(|a, b| (&a.name, a.kind, &a.value).cmp(&(&b.name, b.kind, &b.value)));
        all
    }

    /// How many records are served.
    pub fn len(&self) -> usize {
        self.read_index().by_name.values().map(Vec::len).sum()
    }

    /// The records of `name`, or `None` when it has no explicit records.
    pub fn lookup(&self, name: &LowerName) -> Option<Vec<ExplicitRecord>> {
        self.read_index().by_name.get(name).map(|entries| {
            entries
                .iter()
                .map(|e| ExplicitRecord {
                    kind: e.spec.kind,
                    ttl: e.spec.ttl,
                    rdata: e.rdata.clone(),
                })
                .collect()
        })
    }

    /// The zone's SOA serial; it changes with every record change.
    pub fn serial(&self) -> u32 {
        self.read_index().serial
    }

    /// Applies `changes` and the next serial as one batch to the tree and commits it;
    /// returns that serial. A failed commit ends dnsd (see the module doc).
    fn commit(
        &self,
        durable: &mut DurableTree,
        mut changes: Vec<Change>,
    ) -> Result<u32, StoreError> {
        let serial = next_serial(self.read_index().serial);
        changes.push((SERIAL_KEY.to_vec(), Some(serial.to_be_bytes().to_vec())));
        durable.db().apply_batch(batch_of(&changes))?;
        if let Err(error) = durable.commit() {
            durable::exit_for_restart("committing a record change", &error);
        }
        Ok(serial)
    }

    fn flush_to_disk(&self, db: &sled::Db) -> Result<(), sled::Error> {
        #[cfg(test)]
        if self
            .failing_flushes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            )));
        }
        db.flush()?;
        Ok(())
    }

    fn lock_tree(&self) -> std::sync::MutexGuard<'_, Option<DurableTree>> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        let Ok(owner) = entry.spec.owner() else {
            return;
        };
        let entries = self.by_name.entry(owner).or_default();
        entries.push(entry);
        entries.sort_by(|a, b| (a.spec.kind, &a.spec.value).cmp(&(b.spec.kind, &b.spec.value)));
    }

    fn remove(&mut self, owner: &LowerName, matches: impl Fn(&Entry) -> bool) {
        if let Some(entries) = self.by_name.get_mut(owner) {
            entries.retain(|e| !matches(e));
            if entries.is_empty() {
                self.by_name.remove(owner);
            }
        }
    }

    fn records_of(&self, owner: &LowerName) -> Vec<RecordSpec> {
        self.by_name
            .get(owner)
            .map(|entries| entries.iter().map(|e| e.spec.clone()).collect())
            .unwrap_or_default()
    }
}

/// The index of every record of `db` that is valid under `names`, and its serial.
fn load(db: &sled::Db, names: &ZoneNames) -> Result<Index, StoreError> {
    let mut index = Index {
        serial: read_serial(db)?.unwrap_or(FIRST_SERIAL),
        ..Index::default()
    };
    for item in db.scan_prefix(RECORD_PREFIX) {
        let (key, value) = item?;
        match decode(&value).and_then(|spec| revalidate(names, spec)) {
            Ok(entry) => index.insert(entry),
            Err(reason) => tracing::warn!(
                key = %String::from_utf8_lossy(&key).replace('\0', " "),
                %reason,
                "stored record ignored"
            ),
        }
    }
    Ok(index)
}

/// The next SOA serial (RFC 1982 arithmetic wraps; 0 is skipped to stay recognisable).
fn next_serial(serial: u32) -> u32 {
    match serial.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

fn read_serial(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    Ok(db
        .get(SERIAL_KEY)?
        .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_ref()).ok())
        .map(u32::from_be_bytes))
}

fn batch_of(changes: &[Change]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in changes {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.as_slice()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

fn record_key(spec: &RecordSpec) -> Vec<u8> {
    let mut key = RECORD_PREFIX.to_vec();
    key.extend_from_slice(spec.name.as_bytes());
    key.push(0);
    key.extend_from_slice(spec.kind.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(spec.value.as_bytes());
    key
}

fn encode(spec: &RecordSpec) -> Result<Vec<u8>, StoreError> {
    Ok(bincode::serde::encode_to_vec(
        spec,
        bincode::config::standard(),
    )?)
}

fn decode(bytes: &[u8]) -> Result<RecordSpec, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(spec, _)| spec)
        .map_err(|e| format!("undecodable: {e}"))
}

/// Checks a stored record against the current settings and prepares it for serving.
fn revalidate(names: &ZoneNames, stored: RecordSpec) -> Result<Entry, String> {
    let spec = RecordSpec::parse(
        names,
        &stored.name,
        stored.kind.as_str(),
        &stored.value,
        stored.ttl,
    )
    .map_err(|e| e.to_string())?;
    let rdata = spec.rdata().map_err(|e| e.to_string())?;
    Ok(Entry { spec, rdata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: &str, value: &str) -> RecordSpec {
        RecordSpec::parse(&ZoneNames::new("test"), name, kind, value, 0).unwrap()
    }

    fn owner(name: &str) -> LowerName {
        LowerName::from(hickory_proto::rr::Name::from_ascii(name).unwrap())
    }

    /// Opens like the daemon does: retrying while sled's threads still let go of a
    /// tree dropped a moment ago.
    fn open_db(dir: &std::path::Path) -> sled::Db {
        securely_core::store::open_tree(dir, securely_core::store::OPEN_DEADLINE).unwrap()
    }

    fn open(dir: &std::path::Path) -> RecordStore {
        RecordStore::open(open_db(dir), dir, &ZoneNames::new("test")).unwrap()
    }

    #[test]
    fn records_survive_reopening_and_serial_moves() {
        let dir = tempfile::tempdir().unwrap();
        let first_serial;
        {
            let store = open(dir.path());
            first_serial = store.serial();
            store.set(spec("api.test", "A", "10.0.0.1")).unwrap();
            store.set(spec("api.test", "A", "10.0.0.2")).unwrap();
            store.set(spec("api.test", "A", "10.0.0.2")).unwrap();
            store.set(spec("txt.test", "TXT", "hello")).unwrap();
            assert_eq!(store.len(), 3);
            assert!(store.serial() > first_serial);
        }
        let store = open(dir.path());
        assert_eq!(store.len(), 3);
        assert_eq!(store.lookup(&owner("API.test.")).unwrap().len(), 2);
        assert_eq!(store.serial(), first_serial + 4);
        assert_eq!(store.unset("api.test", Some(RecordKind::A)).unwrap(), 2);
        assert!(store.lookup(&owner("api.test.")).is_none());
        assert_eq!(store.unset("nothing.test", None).unwrap(), 0);
    }

    #[test]
    fn cname_excludes_other_data_and_replaces_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.set(spec("a.test", "A", "10.0.0.1")).unwrap();
        assert!(matches!(
            store.set(spec("a.test", "CNAME", "b.test")),
            Err(StoreError::Conflict(_))
        ));
        store.set(spec("c.test", "CNAME", "b.test")).unwrap();
        store.set(spec("c.test", "CNAME", "d.test")).unwrap();
        let list = store.list();
        let c: Vec<_> = list.iter().filter(|s| s.name == "c.test").collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].value, "d.test");
        assert!(matches!(
            store.set(spec("c.test", "TXT", "x")),
            Err(StoreError::Conflict(_))
        ));
    }

    /// Whether another opener could take the tree now (sled's flock conflicts between
    /// two opens even in one process, so this fails while any handle is alive).
    fn held(dir: &std::path::Path) -> bool {
        securely_core::store::open_tree(dir, std::time::Duration::ZERO).is_err()
    }

    #[test]
    fn a_detached_store_answers_from_memory_and_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.set(spec("api.test", "A", "10.0.0.1")).unwrap();
        store.set(spec("txt.test", "TXT", "hello")).unwrap();
        let (serial, listed) = (store.serial(), store.list());
        assert!(held(dir.path()));

        store.detach().unwrap();
        // Every handle is gone: another opener gets the tree.
        drop(open_db(dir.path()));
        assert_eq!(store.serial(), serial);
        assert_eq!(store.list(), listed);
        assert_eq!(store.lookup(&owner("api.test.")).unwrap().len(), 1);
        assert!(matches!(
            store.set(spec("new.test", "A", "10.0.0.2")),
            Err(StoreError::Detached)
        ));
        assert!(matches!(
            store.unset("api.test", None),
            Err(StoreError::Detached)
        ));
        assert_eq!(store.list(), listed);
        // Detaching again (closing at exit) is fine.
        store.detach().unwrap();
    }

    #[test]
    fn reattaching_reloads_what_another_opener_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.set(spec("old.test", "A", "10.0.0.1")).unwrap();
        store.set(spec("kept.test", "A", "10.0.0.2")).unwrap();
        store.detach().unwrap();

        let other_serial = {
            let other = open(dir.path());
            other.unset("old.test", None).unwrap();
            other.set(spec("new.test", "TXT", "hello")).unwrap();
            other.detach().unwrap();
            other.serial()
        };
        // Until reattached, the detached store still answers what it knew.
        assert!(store.lookup(&owner("old.test.")).is_some());
        assert!(store.lookup(&owner("new.test.")).is_none());

        store.attach(open_db(dir.path()), dir.path()).unwrap();
        assert!(store.lookup(&owner("old.test.")).is_none());
        assert!(store.lookup(&owner("kept.test.")).is_some());
        assert!(store.lookup(&owner("new.test.")).is_some());
        assert_eq!(store.serial(), other_serial);
        store.set(spec("later.test", "A", "10.0.0.3")).unwrap();
        assert_eq!(store.serial(), other_serial + 1);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn a_detach_whose_flush_fails_still_closes_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.set(spec("api.test", "A", "10.0.0.1")).unwrap();
        store.failing_flushes.store(1, Ordering::Release);
        assert!(matches!(store.detach(), Err(StoreError::Sled(_))));
        // The tree is free again, and holds what was acknowledged.
        assert_eq!(open(dir.path()).len(), 1);
        assert!(matches!(
            store.set(spec("new.test", "A", "10.0.0.2")),
            Err(StoreError::Detached)
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn records_outside_a_new_tld_are_kept_but_not_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store.set(spec("api.test", "A", "10.0.0.1")).unwrap();
        }
        let store =
            RecordStore::open(open_db(dir.path()), dir.path(), &ZoneNames::new("dev")).unwrap();
        assert_eq!(store.len(), 0);
        drop(store);
        assert_eq!(open(dir.path()).len(), 1);
    }
}
