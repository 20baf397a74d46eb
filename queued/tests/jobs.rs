//! The job lifecycle through the real daemon: push, reserve, ack, delays, waits,
//! timeouts, retries, the failed list and the stats.

mod common;

use std::time::{Duration, Instant};

use common::{Home, QUEUE_YAML, Queued, now_ms};
use securely_proto::queue::PushRequest;
use tonic::Code;

#[tokio::test]
async fn push_reserve_ack() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;

    let id = client.push("emails", b"send welcome").await;
    assert!(id > 0);
    let job = client.reserve("emails", 0, 0).await.unwrap();
    assert_eq!(job.id, id);
    assert_eq!(job.queue, "emails");
    assert_eq!(job.payload, b"send welcome");
    assert_eq!((job.attempt, job.max_tries), (1, 3));
    // The default timeout (60 s) applies.
    let until = job.reserved_until_ms.saturating_sub(now_ms());
    assert!((55_000..=60_000).contains(&until), "{until}");

    // Reserved: not handed out twice.
    let empty = client.reserve("emails", 0, 0).await.unwrap_err();
    assert_eq!(empty.code(), Code::NotFound);
    assert_eq!(empty.message(), "queue emails is empty");

    client.ack(id).await.unwrap();
    let again = client.ack(id).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert!(
        again.message().contains("not reserved"),
        "{}",
        again.message()
    );
}

#[tokio::test]
async fn jobs_come_out_in_push_order() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let mut pushed = Vec::new();
    for i in 0..10u8 {
        pushed.push(client.push("fifo", &[i]).await);
    }
    client.push("elsewhere", b"other queue").await;
    let mut reserved = Vec::new();
    for i in 0..10u8 {
        let job = client.reserve("fifo", 0, 0).await.unwrap();
        assert_eq!(job.payload, [i]);
        reserved.push(job.id);
    }
    assert_eq!(reserved, pushed);
    assert_eq!(
        client.reserve("fifo", 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_delayed_job_is_reservable_only_after_its_time() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let pushed_at = Instant::now();
    // Three seconds: room for a slow machine between the push and the first reserve.
    let id = client.push_with("later", b"x", 3, 0).await.unwrap().id;
    assert_eq!(
        client.reserve("later", 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    let delayed = client.stats("later").await;
    assert_eq!((delayed.ready, delayed.delayed), (0, 1));
    // A waiting Reserve is woken when the delay ends.
    let job = client.reserve("later", 0, 10).await.unwrap();
    let waited = pushed_at.elapsed();
    assert_eq!(job.id, id);
    assert!(waited >= Duration::from_millis(2900), "{waited:?}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
}

#[tokio::test]
async fn a_job_pushed_for_a_time_is_reservable_from_that_time() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let at = now_ms() + 2_000;
    let push = |available_at_ms, delay_seconds| PushRequest {
        queue: "at".into(),
        payload: b"x".to_vec(),
        delay_seconds,
        available_at_ms,
        ..Default::default()
    };
    let id = client.0.push(push(at, 0)).await.unwrap().into_inner().id;
    // A time already past: at once.
    let past = client.0.push(push(1, 0)).await.unwrap().into_inner().id;
    let job = client.reserve("at", 0, 0).await.unwrap();
    assert_eq!(job.id, past);
    assert_eq!(
        client.reserve("at", 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    let job = client.reserve("at", 0, 10).await.unwrap();
    assert_eq!(job.id, id);
    assert!(now_ms() >= at);
    // Not both, and not beyond the longest delay.
    for request in [push(at, 5), push(u64::MAX, 0)] {
        let status = client.0.push(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("available_at_ms"), "{status:?}");
    }
}

#[tokio::test]
async fn a_waiting_reserve_gets_a_job_pushed_during_the_wait() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut waiter = queued.client().await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move { waiter.reserve("inbox", 0, 20).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pusher = queued.client().await;
    let id = pusher.push("inbox", b"wake up").await;
    let job = waiting.await.unwrap().unwrap();
    assert_eq!(job.id, id);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unacknowledged_job_comes_back_after_its_timeout() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push("work", b"job-1").await;
    let first = client.reserve("work", 1, 0).await.unwrap();
    assert_eq!((first.id, first.attempt), (id, 1));
    let second = client.reserve("work", 30, 5).await.unwrap();
    assert_eq!((second.id, second.attempt), (id, 2));
    assert!(second.reserved_until_ms > first.reserved_until_ms);
    client.ack(id).await.unwrap();
    let stats = client.stats("work").await;
    assert_eq!((stats.ready, stats.reserved, stats.failed), (0, 0, 0));
}

#[tokio::test]
async fn a_reservation_expiring_on_the_last_try_fails_the_job() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push_with("fragile", b"x", 0, 1).await.unwrap().id;
    client.reserve("fragile", 1, 0).await.unwrap();
    let give_up = Instant::now() + Duration::from_secs(5);
    let failed = loop {
        let failed = client.failed("fragile").await;
        if !failed.is_empty() {
            break failed;
        }
        assert!(Instant::now() < give_up, "the expired job never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed[0].id, id);
    assert_eq!(failed[0].error, "reservation expired after 1 attempts");
    assert_eq!(
        client.ack(id).await.unwrap_err().code(),
        Code::NotFound,
        "a failed job cannot be acknowledged"
    );
}

#[tokio::test]
async fn failing_retries_with_backoff_then_lands_in_the_failed_list() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client
        .push_with("reports", b"monthly", 0, 2)
        .await
        .unwrap()
        .id;

    client.reserve("reports", 0, 0).await.unwrap();
    let before = now_ms();
    let retry = client.fail(id, "disk full").await.unwrap();
    assert!(retry.will_retry);
    // First retry after retry_backoff_seconds (1 s).
    assert!(
        (before + 900..=now_ms() + 1_100).contains(&retry.retry_at_ms),
        "{retry:?}"
    );
    assert_eq!(
        client.reserve("reports", 0, 0).await.unwrap_err().code(),
        Code::NotFound,
        "not before its backoff"
    );
    let second = client.reserve("reports", 0, 5).await.unwrap();
    assert_eq!(second.attempt, 2);
    assert!(now_ms() >= retry.retry_at_ms);

    let last = client.fail(id, "disk still full").await.unwrap();
    assert!(!last.will_retry);
    let failed = client.failed("reports").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, id);
    assert_eq!(failed[0].queue, "reports");
    assert_eq!(failed[0].payload, b"monthly");
    assert_eq!(failed[0].attempts, 2);
    assert_eq!(failed[0].error, "disk still full");
    assert!(client.failed("").await.iter().any(|j| j.id == id));
    assert!(client.failed("other").await.is_empty());
    assert_eq!(
        client.fail(id, "again").await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn stats_count_every_state() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let doomed = client.push_with("s", b"a", 0, 1).await.unwrap().id;
    client.push("s", b"b").await;
    client.push_with("s", b"c", 60, 0).await.unwrap();
    assert_eq!(client.reserve("s", 0, 0).await.unwrap().id, doomed);
    assert!(!client.fail(doomed, "boom").await.unwrap().will_retry);
    client.reserve("s", 0, 0).await.unwrap();
    client.push("s", b"d").await;
    let stats = client.stats("s").await;
    assert_eq!(
        (
            stats.ready,
            stats.delayed,
            stats.reserved,
            stats.failed,
            stats.pushed_total
        ),
        (1, 1, 1, 1, 4)
    );
}

#[tokio::test]
async fn a_payload_of_the_maximum_size_round_trips() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let id = client.push("big", &payload).await;
    let job = client.reserve("big", 0, 0).await.unwrap();
    assert_eq!(job.id, id);
    assert!(job.payload == payload, "the payload came back altered");
    client.ack(id).await.unwrap();
}
