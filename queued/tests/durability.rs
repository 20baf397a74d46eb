//! A push that returned OK survives SIGKILL; a graceful stop keeps everything too.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Home, QUEUE_YAML, Queued};
use nix::sys::signal::Signal;

/// Acknowledged pushes to collect before the kill.
const ACKNOWLEDGED: usize = 200;
/// Concurrent pushers (each on its own connection).
const PUSHERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_push_survives_sigkill() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let (enough_tx, enough_rx) = tokio::sync::watch::channel(false);
    let enough_tx = Arc::new(enough_tx);
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let mut client = queued.client().await;
        let acknowledged = acknowledged.clone();
        let enough_tx = enough_tx.clone();
        pushers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            // Push until the daemon dies under us: pushes are in flight at the kill.
            for i in 0.. {
                let payload = format!("pusher {p} job {i}");
                match client.push_with("durable", payload.as_bytes(), 0, 0).await {
                    Ok(reply) => ids.push((reply.id, payload)),
                    Err(_) => break,
                }
                if acknowledged.fetch_add(1, Ordering::SeqCst) + 1 >= ACKNOWLEDGED {
                    enough_tx.send_replace(true);
                }
            }
            ids
        }));
    }
    let mut enough = enough_rx;
    tokio::time::timeout(Duration::from_secs(20), enough.wait_for(|e| *e))
        .await
        .expect("pushes were acknowledged in time")
        .unwrap();
    queued.kill();
    let mut pushed = Vec::new();
    for pusher in pushers {
        pushed.extend(pusher.await.unwrap());
    }
    assert!(pushed.len() >= ACKNOWLEDGED);

    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let mut found = std::collections::BTreeMap::new();
    loop {
        match client.reserve("durable", 0, 0).await {
            Ok(job) => {
                found.insert(job.id, job.payload);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                break;
            }
        }
    }
    let lost: BTreeSet<u64> = pushed
        .iter()
        .filter(|(id, payload)| found.get(id).map(Vec::as_slice) != Some(payload.as_bytes()))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs were lost: {lost:?}\n{}",
        lost.len(),
        pushed.len(),
        home.log()
    );
}

#[tokio::test]
async fn a_graceful_stop_exits_zero_and_a_restart_keeps_every_state() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let waiting = client.push("kept", b"waiting").await;
    let delayed = client
        .push_with("kept", b"delayed", 60, 0)
        .await
        .unwrap()
        .id;
    let reserved = client.push("kept", b"reserved").await;
    assert_eq!(client.reserve("kept", 60, 0).await.unwrap().id, waiting);
    drop(client);
    queued.signal(Signal::SIGTERM);
    let status = queued
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("queued exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", home.log());

    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let stats = client.stats("kept").await;
    assert_eq!(
        (
            stats.ready,
            stats.delayed,
            stats.reserved,
            stats.pushed_total
        ),
        (1, 1, 1, 3)
    );
    assert_eq!(client.reserve("kept", 0, 0).await.unwrap().id, reserved);
    client.ack(waiting).await.unwrap();
    let later = client.push("kept", b"new").await;
    assert!(later > delayed, "ids are never reused");
}
