//! Group commit: one thread appends the records of every caller waiting at the time with
//! one `write` and one `fdatasync`, and answers them all.
//!
//! Callers number their records (consecutively, see [`LogHandle::append`]) and wait on a
//! [`PendingAppend`]. The writer takes every append queued so far, writes those that
//! follow on from the last one written (an append that overtook an earlier one in the
//! queue waits for it), syncs once, raises the durable watermark
//! ([`LogHandle::durable`]) to the last record synced, runs each record's `on_durable`
//! action and answers the callers. Appends that arrive meanwhile form the next batch.
//!
//! A failed write or sync answers its callers with the error and exits the process for a
//! restart (see [`securely_core::durable`]): nothing of that batch was acknowledged, and
//! recovery keeps exactly the records that reached the disk whole.
//!
//! Once the last segment is over its size ([`SEGMENT_BYTES`] by default), the next batch
//! starts a new one.
//! [`LogHandle::compact_through`] lets the writer delete whole segments that a checkpoint
//! covers. [`Writer::stop`] writes and answers every append queued before it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use securely_core::durable::{self, CommitError};
use tokio::sync::{mpsc, oneshot};

use super::AppendError;
use super::frame::{self, Lsn};
use super::segments::{self, Segment};

/// The size past which the next batch goes to a new segment, by default.
pub const SEGMENT_BYTES: u64 = 32 << 20;

/// What [`durable::sync_file`] reports a failure of.
const WHAT: &str = "the queue's log";

/// Run on the writer thread once a record is durable.
pub type OnDurable = Box<dyn FnOnce() + Send>;

type Waiter = oneshot::Sender<Result<(), AppendError>>;

/// One caller's record.
struct Append {
    lsn: Lsn,
    body: Vec<u8>,
    waiter: Waiter,
    on_durable: Option<OnDurable>,
}

enum Message {
    Append(Append),
    CompactThrough(Lsn),
    Stop,
}

/// The numbers handed out and the durable watermark.
#[derive(Debug)]
struct Sequence {
    /// The last number handed out.
    issued: AtomicU64,
    /// Every record numbered up to this is on the disk.
    durable: AtomicU64,
}

/// The writer thread.
#[derive(Debug)]
pub struct Writer {
    handle: LogHandle,
    thread: JoinHandle<()>,
}

/// Appends records to the log; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogHandle {
    tx: mpsc::UnboundedSender<Message>,
    sequence: Arc<Sequence>,
}

/// An append asked for: resolves once its record (and every one before) is on the disk.
#[derive(Debug)]
#[must_use = "an append is acknowledged only once it is waited for"]
pub struct PendingAppend {
    lsn: Lsn,
    answer: oneshot::Receiver<Result<(), AppendError>>,
}

/// Where the writer appends.
pub(super) struct Tail {
    pub dir: PathBuf,
    /// The segments present, in order; the last is appended to.
    pub segments: Vec<Segment>,
    /// The last segment, open for appending, and its length.
    pub file: Option<(File, u64)>,
    /// The last record in the log.
    pub last: Lsn,
    /// The size past which the next batch goes to a new segment.
    pub segment_bytes: u64,
}

impl Writer {
    /// Starts the writer, appending after `tail`.
    pub(super) fn start(tail: Tail) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sequence = Arc::new(Sequence {
            issued: AtomicU64::new(tail.last),
            durable: AtomicU64::new(tail.last),
        });
        let thread = {
            let sequence = sequence.clone();
            std::thread::Builder::new()
                .name("queued-log".into())
                .spawn(move || run(tail, &sequence, rx))?
        };
        Ok(Self {
            handle: LogHandle { tx, sequence },
            thread,
        })
    }

    /// A handle for callers.
    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    /// Writes what is queued, stops the thread and waits for it (the log's files are
    /// closed when this returns). Later appends fail with [`AppendError::Stopped`].
    pub async fn stop(self) {
        let _ = self.handle.tx.send(Message::Stop);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the log's writer thread panicked"),
        }
    }
}

impl LogHandle {
    /// The number the next record must carry.
    pub fn next_lsn(&self) -> Lsn {
        self.sequence.issued.load(Ordering::Acquire) + 1
    }

    /// Appends `body` as record `lsn`, which must be [`LogHandle::next_lsn`]; `on_durable`
    /// runs once it is on the disk (not if the write fails).
    pub fn append(
        &self,
        lsn: Lsn,
        body: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<PendingAppend, AppendError> {
        if body.len() > frame::MAX_BODY_LEN {
            return Err(AppendError::TooLarge(body.len()));
        }
        self.sequence
            .issued
            .compare_exchange(lsn - 1, lsn, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|issued| AppendError::OutOfOrder {
                lsn,
                expected: issued + 1,
            })?;
        let (waiter, answer) = oneshot::channel();
        let append = Append {
            lsn,
            body,
            waiter,
            on_durable,
        };
        self.tx
            .send(Message::Append(append))
            .map_err(|_| AppendError::Stopped)?;
        Ok(PendingAppend { lsn, answer })
    }

    /// The durable watermark: every record numbered up to this is on the disk.
    pub fn durable(&self) -> Lsn {
        self.sequence.durable.load(Ordering::Acquire)
    }

    /// Lets the writer delete every segment whose records are all at most `lsn` (a
    /// checkpoint covers them). The segment appended to is kept.
    pub fn compact_through(&self, lsn: Lsn) {
        let _ = self.tx.send(Message::CompactThrough(lsn));
    }
}

impl PendingAppend {
    /// This record's number.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Waits until the record is on the disk.
    pub async fn wait(self) -> Result<(), AppendError> {
        self.answer.await.unwrap_or(Err(AppendError::Stopped))
    }
}

fn run(mut tail: Tail, sequence: &Sequence, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut queued: BTreeMap<Lsn, Append> = BTreeMap::new();
    let mut buffer = Vec::new();
    let (mut syncs, mut records) = (0u64, 0u64);
    loop {
        let mut stop = false;
        let mut compact = None;
        let mut take = |message| match message {
            Message::Append(append) => {
                queued.insert(append.lsn, append);
            }
            Message::CompactThrough(lsn) => compact = compact.max(Some(lsn)),
            Message::Stop => stop = true,
        };
        match rx.blocking_recv() {
            Some(message) => take(message),
            None => take(Message::Stop),
        }
        while let Ok(message) = rx.try_recv() {
            take(message);
        }
        // The run of records that follows on from the last one written.
        let mut batch = Vec::new();
        while let Some(entry) = queued.first_entry() {
            if *entry.key() != tail.last + 1 + batch.len() as u64 {
                break;
            }
            batch.push(entry.remove());
        }
        if !batch.is_empty() {
            buffer.clear();
            for append in &batch {
                frame::encode(append.lsn, &append.body, &mut buffer);
            }
            let first = batch[0].lsn;
            if let Err(error) = write_and_sync(&mut tail, first, &buffer) {
                for append in batch {
                    let _ = append.waiter.send(Err(AppendError::Failed(error.clone())));
                }
                // Nothing of this batch was acknowledged; restart from what the disk holds.
                durable::exit_for_restart("appending to the queue's log", &error);
            }
            tail.last += batch.len() as u64;
            sequence.durable.fetch_max(tail.last, Ordering::AcqRel);
            syncs += 1;
            records += batch.len() as u64;
            for append in &mut batch {
                if let Some(action) = append.on_durable.take() {
                    action();
                }
            }
            for append in batch {
                let _ = append.waiter.send(Ok(()));
            }
        }
        if let Some(through) = compact {
            compact_through(&mut tail, through);
        }
        if stop {
            // Appends that never found their predecessor were never answered: refuse them.
            for (_, append) in queued {
                let _ = append.waiter.send(Err(AppendError::Stopped));
            }
            tracing::info!(syncs, records, "log writer stopped");
            return;
        }
    }
}

/// Appends `bytes` (records from `first` on) to the last segment, or to a new one when
/// it is full or missing, and syncs them.
fn write_and_sync(tail: &mut Tail, first: Lsn, bytes: &[u8]) -> Result<(), CommitError> {
    let io = |source: std::io::Error| CommitError::SyncFile {
        what: WHAT,
        source: Arc::new(source),
    };
    let full = tail
        .file
        .as_ref()
        .is_none_or(|(_, len)| *len >= tail.segment_bytes);
    if full {
        let file = segments::create(&tail.dir, first).map_err(io)?;
        tail.segments.push(Segment {
            first,
            path: segments::path_of(&tail.dir, first),
        });
        tail.file = Some((file, 0));
    }
    let (file, len) = tail.file.as_mut().expect("a segment is open");
    file.write_all(bytes).map_err(io)?;
    *len += bytes.len() as u64;
    durable::sync_file(file, WHAT)
}

/// Deletes the segments whose records are all at most `through`, but never the last.
fn compact_through(tail: &mut Tail, through: Lsn) {
    let mut removed = 0;
    while tail.segments.len() > 1 && tail.segments[1].first <= through + 1 {
        let segment = tail.segments.remove(0);
        if let Err(e) = std::fs::remove_file(&segment.path) {
            tracing::warn!(path = %segment.path.display(), "removing a compacted log segment: {e}");
        }
        removed += 1;
    }
    if removed > 0 {
        tracing::debug!(removed, through, "log segments compacted");
    }
}
