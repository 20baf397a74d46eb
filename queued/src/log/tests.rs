use std::path::Path;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

/// Segments this small hold a handful of records each.
const SMALL_SEGMENTS: u64 = 256;

/// Replays the log in `dir` after `checkpoint` into a list.
fn replay_all(dir: &Path, checkpoint: Lsn) -> (Vec<(Lsn, Vec<u8>)>, Writer, Recovered) {
    let mut seen = Vec::new();
    let (writer, recovered) = open(dir, checkpoint, SMALL_SEGMENTS, |lsn, body| {
        seen.push((lsn, body.to_vec()));
        Ok(())
    })
    .expect("the log opens");
    (seen, writer, recovered)
}

fn body_of(lsn: Lsn) -> Vec<u8> {
    format!("record {lsn} ")
        .repeat(1 + (lsn % 7) as usize)
        .into_bytes()
}

/// Appends `count` records through `writer`, one after the other, so that each batch holds
/// one record and small segments rotate predictably.
async fn append_one_by_one(writer: &Writer, count: u64) {
    let handle = writer.handle();
    for _ in 0..count {
        let lsn = handle.next_lsn();
        handle
            .append(lsn, body_of(lsn), None)
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
}

/// Appends `count` records through `writer`, concurrently, each waited for.
async fn append_concurrently(writer: &Writer, count: u64) {
    // The engine numbers and appends under its lock; so do these callers.
    let lock = Arc::new(Mutex::new(()));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (handle, lock) = (writer.handle(), lock.clone());
        tasks.push(tokio::spawn(async move {
            let pending = {
                let _held = lock.lock().unwrap();
                let lsn = handle.next_lsn();
                handle.append(lsn, body_of(lsn), None).unwrap()
            };
            let lsn = pending.lsn();
            pending.wait().await.unwrap();
            assert!(handle.durable() >= lsn, "answered only once durable");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_answered_and_replayed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, writer, recovered) = replay_all(dir.path(), 0);
    assert!(seen.is_empty());
    assert_eq!(recovered.last, 0);
    append_concurrently(&writer, 150).await;
    append_one_by_one(&writer, 50).await;
    writer.stop().await;

    let (seen, writer, recovered) = replay_all(dir.path(), 0);
    let expected: Vec<_> = (1..=200).map(|lsn| (lsn, body_of(lsn))).collect();
    assert_eq!(seen, expected);
    assert_eq!((recovered.last, recovered.discarded_bytes), (200, 0));
    assert!(
        segments::list(dir.path()).unwrap().len() > 1,
        "small segments rotate"
    );
    // Appending goes on after the last record; a checkpoint skips what it covers.
    append_concurrently(&writer, 5).await;
    writer.stop().await;
    let (seen, writer, _) = replay_all(dir.path(), 150);
    assert_eq!(seen.first().map(|r| r.0), Some(151));
    assert_eq!(seen.last().map(|r| r.0), Some(205));
    writer.stop().await;
}

#[tokio::test]
async fn appends_out_of_order_or_after_the_stop_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writer, _) = replay_all(dir.path(), 0);
    let handle = writer.handle();
    assert!(matches!(
        handle.append(2, b"x".to_vec(), None),
        Err(AppendError::OutOfOrder {
            lsn: 2,
            expected: 1
        })
    ));
    // Asked before the stop: written and answered by it.
    let before = handle.append(1, b"one".to_vec(), None).unwrap();
    writer.stop().await;
    before.wait().await.unwrap();
    assert!(matches!(
        handle.append(2, b"two".to_vec(), None),
        Err(AppendError::Stopped)
    ));
}

#[tokio::test]
async fn compaction_removes_only_segments_a_checkpoint_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writer, _) = replay_all(dir.path(), 0);
    append_one_by_one(&writer, 100).await;
    let before = segments::list(dir.path()).unwrap();
    assert!(before.len() > 3);
    // Through the record before the third segment: the first two go.
    let through = before[2].first - 1;
    writer.handle().compact_through(through);
    writer.stop().await;
    let after = segments::list(dir.path()).unwrap();
    assert_eq!(after, before[2..].to_vec());
    let (seen, writer, _) = replay_all(dir.path(), through);
    assert_eq!(seen.first().map(|r| r.0), Some(through + 1));
    assert_eq!(seen.len() as u64, 100 - through);
    writer.stop().await;
    // A state older than the log's start cannot be brought up to date.
    assert!(matches!(
        open(dir.path(), 0, SMALL_SEGMENTS, |_, _| Ok(())),
        Err(LogError::Gap { .. })
    ));
}

#[tokio::test]
async fn a_log_behind_the_checkpoint_starts_afresh_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writer, _) = replay_all(dir.path(), 0);
    append_concurrently(&writer, 10).await;
    writer.stop().await;
    // The state holds records up to 20, of which the log synced only 10.
    let (seen, writer, recovered) = replay_all(dir.path(), 20);
    assert!(seen.is_empty());
    assert_eq!(recovered.last, 20);
    assert_eq!(writer.handle().next_lsn(), 21);
    append_concurrently(&writer, 3).await;
    writer.stop().await;
    let (seen, writer, _) = replay_all(dir.path(), 20);
    assert_eq!(
        seen.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![21, 22, 23]
    );
    writer.stop().await;
}

/// A pristine log of `RECORDS` records in small segments, as (file name, bytes).
fn pristine_log() -> &'static [(String, Vec<u8>)] {
    static LOG: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let (_, writer, _) = replay_all(dir.path(), 0);
            append_one_by_one(&writer, RECORDS).await;
            writer.stop().await;
        });
        segments::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&s.path).unwrap())
            })
            .collect()
    })
}

const RECORDS: u64 = 60;

/// What is done to the pristine log before it is replayed.
#[derive(Debug, Clone)]
enum Damage {
    /// The segment is cut at this fraction of its length.
    Truncate { segment: usize, at: f64 },
    /// One byte of the segment is changed.
    Flip { segment: usize, at: f64, xor: u8 },
    /// Bytes are added at the end of the last segment (a write torn mid-record, or zeros
    /// from a file extended by a crash).
    Append { bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0usize..64, 0.0f64..1.0).prop_map(|(segment, at)| Damage::Truncate { segment, at }),
        (0usize..64, 0.0f64..1.0, 1u8..=255).prop_map(|(segment, at, xor)| Damage::Flip {
            segment,
            at,
            xor
        }),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..64),
            (1usize..64).prop_map(|n| vec![0u8; n]),
        ]
        .prop_map(|bytes| Damage::Append { bytes }),
    ]
}

/// The number of whole records in `bytes`, a segment's pristine content, up to `offset`.
fn records_before(bytes: &[u8], offset: usize) -> u64 {
    let (mut at, mut count) = (0, 0);
    while let Ok(frame) = frame::decode(&bytes[at..]) {
        if at + frame.len > offset {
            break;
        }
        at += frame.len;
        count += 1;
    }
    count
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Replay accepts exactly the records before the damage, whatever it is, and the log
    /// goes on after them.
    #[test]
    fn replay_keeps_exactly_the_records_before_the_first_damage(damage in damage()) {
        let log = pristine_log();
        // In memory where there is a tmpfs: this checks replay, not the disk, thousands
        // of times, and its syncs cost nothing there.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = log.to_vec();
        // How many records (counted from the start of the log) must survive.
        let records_in = |files: &[(String, Vec<u8>)], upto: usize| -> u64 {
            files[..upto].iter().map(|(_, b)| records_before(b, b.len())).sum()
        };
        let expected = match &damage {
            Damage::Truncate { segment, at } => {
                let index = segment % files.len();
                let bytes = &mut files[index].1;
                let cut = (bytes.len() as f64 * at) as usize;
                let kept = records_before(bytes, cut);
                bytes.truncate(cut);
                records_in(log, index) + kept
            }
            Damage::Flip { segment, at, xor } => {
                let index = segment % files.len();
                let bytes = &mut files[index].1;
                let offset = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
                let kept = records_before(bytes, offset);
                bytes[offset] ^= xor;
                records_in(log, index) + kept
            }
            Damage::Append { bytes } => {
                files.last_mut().unwrap().1.extend_from_slice(bytes);
                RECORDS
            }
        };
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (seen, writer, recovered) = replay_all(dir.path(), 0);
            let wanted: Vec<_> = (1..=expected).map(|lsn| (lsn, body_of(lsn))).collect();
            prop_assert_eq!(&seen, &wanted);
            prop_assert_eq!(recovered.last, expected);
            // The log goes on right after what was kept, and a second replay agrees.
            let handle = writer.handle();
            let next = handle.next_lsn();
            prop_assert_eq!(next, expected + 1);
            handle.append(next, body_of(next), None).unwrap().wait().await.unwrap();
            writer.stop().await;
            let (seen, writer, recovered) = replay_all(dir.path(), 0);
            prop_assert_eq!(seen.len() as u64, expected + 1);
            prop_assert_eq!(recovered.discarded_bytes, 0);
            writer.stop().await;
            Ok(())
        })?;
    }
}
