//! A job is handed out only once its push is on disk, proven with a slow and a failing
//! disk sync injected into the real daemon (the debug-build hook of
//! `securely_core::durable::fault`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Home, QUEUE_YAML, Queued};
use securely_core::durable::EXIT_COMMIT_FAILED;
use securely_core::durable::fault::SYNC_FAULT_ENV;
use tonic::Code;

/// How long the injected sync takes.
const SLOW_SYNC: Duration = Duration::from_millis(1500);
/// How long after a push starts the wait-0 Reserve is sent: well inside the slow sync.
const REACT: Duration = Duration::from_millis(300);

/// A home and the fault file its daemon obeys (absent: no fault).
fn home() -> (Home, PathBuf) {
    let home = Home::new(QUEUE_YAML);
    let fault = home.dir.path().join("sync-fault");
    (home, fault)
}

async fn start(home: &Home, fault: &Path) -> Queued {
    Queued::start_with_env(home, &[(SYNC_FAULT_ENV, fault)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_sync_is_pending_is_not_handed_out() {
    let (home, fault) = home();
    let queued = start(&home, &fault).await;
    let mut client = queued.client().await;
    // Without a fault a push is reserved at once.
    let quick = client.push("q", b"quick").await;
    assert_eq!(client.reserve("q", 60, 0).await.unwrap().id, quick);
    client.ack(quick).await.unwrap();

    std::fs::write(&fault, format!("delay={}", SLOW_SYNC.as_millis())).unwrap();
    let mut waiting = queued.client().await;
    let waiter = tokio::spawn(async move {
        let job = waiting.reserve("q", 60, 10).await;
        (job, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut pusher = queued.client().await;
    let push = tokio::spawn(async move { pusher.push_with("q", b"slow", 0, 0).await });
    tokio::time::sleep(REACT).await;
    let early = client.reserve("q", 60, 0).await;
    assert_eq!(
        early.as_ref().map(|job| job.id).unwrap_err().code(),
        Code::NotFound,
        "a Reserve took a job whose push was not durable: {early:?}"
    );
    let id = push.await.unwrap().expect("the slow push").id;
    assert!(started.elapsed() >= SLOW_SYNC);
    let (job, at) = waiter.await.unwrap();
    assert_eq!(job.expect("the waiting Reserve").id, id);
    assert!(
        at.duration_since(started) >= SLOW_SYNC,
        "the waiting Reserve got the job before its sync was done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sync_acknowledges_nothing_hands_out_nothing_and_exits_for_a_restart() {
    let (home, fault) = home();
    let mut queued = start(&home, &fault).await;
    let mut client = queued.client().await;
    let kept = client.push("kept", b"acknowledged").await;

    std::fs::write(&fault, format!("delay={} fail", SLOW_SYNC.as_millis())).unwrap();
    let mut waiting = queued.client().await;
    let waiter = tokio::spawn(async move { waiting.reserve("q", 60, 10).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut pusher = queued.client().await;
    let push = tokio::spawn(async move { pusher.push_with("q", b"doomed", 0, 0).await });
    tokio::time::sleep(REACT).await;
    let early = client.reserve("q", 60, 0).await;
    assert!(early.is_err(), "a Reserve took the doomed job: {early:?}");
    let pushed = push.await.unwrap();
    assert!(pushed.is_err(), "a push whose sync failed was acknowledged");
    let waited = waiter.await.unwrap();
    assert!(waited.is_err(), "a waiting Reserve got the doomed job");
    let status = queued
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("queued exits after a failed sync");
    assert_eq!(status.code(), Some(EXIT_COMMIT_FAILED), "{}", home.log());

    // Restarted (as the supervisor would) on a healthy disk: the acknowledged job is
    // there; the doomed one, never acknowledged, is wholly there or wholly absent.
    std::fs::remove_file(&fault).unwrap();
    let queued = start(&home, &fault).await;
    let mut client = queued.client().await;
    let job = client.reserve("kept", 60, 0).await.unwrap();
    assert_eq!(
        (job.id, job.payload.as_slice()),
        (kept, &b"acknowledged"[..])
    );
    let stats = client.0.stats(securely_proto::queue::StatsRequest {}).await;
    let doomed = stats
        .unwrap()
        .into_inner()
        .queues
        .into_iter()
        .find(|q| q.queue == "q");
    match doomed {
        None => {}
        Some(q) => {
            assert_eq!((q.ready, q.reserved, q.pushed_total), (1, 0, 1), "{q:?}");
            let job = client.reserve("q", 60, 0).await.unwrap();
            assert_eq!(job.payload, b"doomed");
            assert_eq!(
                client.reserve("q", 60, 0).await.unwrap_err().code(),
                Code::NotFound
            );
        }
    }
    client.ack(kept).await.unwrap();
}
