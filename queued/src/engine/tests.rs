//! The engine over a real tree: waits, the end switch, the close, the reaper's plan and
//! the durable watermark.

use super::*;
use crate::log;

struct Fixture {
    engine: std::sync::Arc<Engine>,
    writer: Writer,
    end: Shutdown,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let store = Store::open(db).unwrap();
    let (writer, _) = log::open(
        &dir.path().join("log"),
        0,
        log::writer::SEGMENT_BYTES,
        |_, _| unreachable!("a new log has nothing to replay"),
    )
    .unwrap();
    let end = Shutdown::new();
    let engine = Engine::new(store, writer.handle(), Backoff::new(0, 0), end.clone());
    Fixture {
        engine: std::sync::Arc::new(engine),
        writer,
        end,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reserve_gets_a_job_pushed_meanwhile() {
    let f = fixture();
    let engine = f.engine.clone();
    let waiter = tokio::spawn(async move {
        engine
            .reserve(&["q".to_string()], 60_000, Duration::from_secs(5))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = f.engine.push("q", b"late", 0, 1).await.unwrap();
    let job = waiter.await.unwrap().unwrap();
    assert_eq!((job.id, job.payload.as_slice()), (id, &b"late"[..]));
    f.writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reserve_ends_at_the_end_switch_and_after_close_all_fail() {
    let f = fixture();
    let engine = f.engine.clone();
    let waiter = tokio::spawn(async move {
        engine
            .reserve(&["q".to_string()], 60_000, Duration::from_secs(60))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.end
        .request(securely_core::shutdown::ShutdownKind::Graceful);
    let result = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the wait ended promptly")
        .unwrap();
    assert!(matches!(result, Err(EngineError::ShuttingDown)));
    f.engine.close(f.writer).await.unwrap();
    assert!(matches!(
        f.engine.push("q", b"x", 0, 1).await,
        Err(EngineError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_cut_by_the_close_are_either_durable_or_without_effect() {
    let f = fixture();
    let pushes: Vec<_> = (0..400u32)
        .map(|i| {
            let engine = f.engine.clone();
            tokio::spawn(async move {
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
                engine.push("q", &i.to_be_bytes(), 0, 1).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2)).await;
    f.engine.close(f.writer).await.unwrap();
    let mut acknowledged = 0u64;
    for push in pushes {
        match push.await.unwrap() {
            Ok(_) => acknowledged += 1,
            Err(EngineError::ShuttingDown) => {}
            Err(e) => panic!("a push was half done: {e}"),
        }
    }
    // Every sled handle is gone: the tree opens again (once sled's I/O threads have
    // let go of it), with exactly the pushes acknowledged.
    let db = securely_core::store::open_tree(f.dir.path(), Duration::from_secs(2)).unwrap();
    let stats = Store::open(db).unwrap().stats(now_ms()).unwrap();
    let pushed = stats.iter().map(|q| q.pushed_total).sum::<u64>();
    assert_eq!(pushed, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserving_plans_the_reaper_for_the_earliest_deadline() {
    let f = fixture();
    f.engine.push("q", b"a", 0, 1).await.unwrap();
    assert_eq!(
        f.engine.reap().unwrap(),
        ReapPass {
            more: false,
            next_deadline_ms: None
        }
    );
    let job = f
        .engine
        .reserve(&["q".to_string()], 10_000, Duration::ZERO)
        .await
        .unwrap();
    // The reserve noticed its deadline is earlier than the reaper's plan.
    tokio::time::timeout(Duration::from_secs(1), f.engine.reaper_woken())
        .await
        .expect("the reaper was woken");
    assert_eq!(
        f.engine.reap().unwrap().next_deadline_ms,
        Some(job.reserved_until_ms)
    );
    f.writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_jobs_show_and_the_hidden_set_stays_small_without_reserves() {
    let f = fixture();
    let mut ids = Vec::new();
    for i in 0..100u32 {
        ids.push(f.engine.push("q", &i.to_be_bytes(), 0, 1).await.unwrap());
    }
    assert!(f.engine.state().hidden.len() <= 1);
    for id in ids {
        let job = f
            .engine
            .reserve(&["q".to_string()], 60_000, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(job.id, id);
    }
    assert_eq!(f.engine.state().hidden.len(), 0);
    f.writer.stop().await;
}
