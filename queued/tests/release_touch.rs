//! Release (back to the queue, no error recorded) and Touch (a longer reservation), over
//! gRPC against the real daemon.

mod common;

use std::time::Duration;

use common::{Home, QUEUE_YAML, Queued, now_ms};
use securely_proto::queue::{ReleaseRequest, TouchRequest};
use tonic::Code;

fn release(id: u64, attempt: u32, delay_seconds: u64) -> ReleaseRequest {
    ReleaseRequest {
        id,
        attempt,
        delay_seconds,
    }
}

fn touch(id: u64, attempt: u32, timeout_seconds: u64) -> TouchRequest {
    TouchRequest {
        id,
        attempt,
        timeout_seconds,
    }
}

#[tokio::test]
async fn a_released_job_comes_back_after_its_delay_with_no_error_and_its_attempt_counted() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push_with("work", b"job", 0, 3).await.unwrap().id;
    let first = client.reserve("work", 30, 0).await.unwrap();
    let before = now_ms();
    let reply = client
        .0
        .release(release(id, 1, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.available_at_ms >= before + 1_000, "{reply:?}");
    let stats = client.stats("work").await;
    assert_eq!((stats.delayed, stats.reserved, stats.failed), (1, 0, 0));
    // Not before its delay; then as the next attempt.
    let code = client.reserve("work", 30, 0).await.unwrap_err().code();
    assert_eq!(code, Code::NotFound);
    let second = client.reserve("work", 30, 3).await.unwrap();
    assert!(now_ms() >= reply.available_at_ms);
    assert_eq!((second.id, second.attempt), (id, first.attempt + 1));
    // The holder of a stale attempt cannot release it; the job is not reserved once acked.
    let stale = client.0.release(release(id, 1, 0)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    client.ack(id).await.unwrap();
    let gone = client.0.release(release(id, 0, 0)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(
        client.failed("work").await.is_empty(),
        "release records no failure"
    );
}

#[tokio::test]
async fn a_release_survives_sigkill() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push("work", b"job").await;
    client.reserve("work", 300, 0).await.unwrap();
    client.0.release(release(id, 0, 0)).await.unwrap();
    queued.kill();
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    // Released, not held by the 300 s reservation it had before.
    let job = client.reserve("work", 30, 0).await.unwrap();
    assert_eq!(job.id, id);
}

#[tokio::test]
async fn a_touched_reservation_outlives_its_first_timeout() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push("work", b"long job").await;
    let job = client.reserve("work", 1, 0).await.unwrap();
    let reply = client
        .0
        .touch(touch(id, job.attempt, 30))
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.reserved_until_ms >= job.reserved_until_ms + 25_000,
        "{reply:?}"
    );
    // Well past the first timeout, the job is still reserved, not handed out again.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let code = client.reserve("work", 30, 0).await.unwrap_err().code();
    assert_eq!(code, Code::NotFound);
    assert_eq!(client.stats("work").await.reserved, 1);
    // A touch can also shorten it: the reaper then hands the job out again.
    client.0.touch(touch(id, job.attempt, 1)).await.unwrap();
    let again = client.reserve("work", 30, 5).await.unwrap();
    assert_eq!((again.id, again.attempt), (id, job.attempt + 1));
    let stale = client
        .0
        .touch(touch(id, job.attempt, 30))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
}

#[tokio::test]
async fn bad_release_and_touch_arguments_are_refused_by_name() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let id = client.push("work", b"job").await;
    for (status, field) in [
        (client.0.release(release(0, 0, 0)).await.unwrap_err(), "id"),
        (
            client
                .0
                .release(release(id, 0, u64::MAX))
                .await
                .unwrap_err(),
            "delay_seconds",
        ),
        (client.0.touch(touch(0, 0, 0)).await.unwrap_err(), "id"),
        (
            client.0.touch(touch(id, 0, u64::MAX)).await.unwrap_err(),
            "timeout_seconds",
        ),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    // A job that is waiting, not reserved, cannot be released or touched.
    let code = client.0.touch(touch(id, 0, 0)).await.unwrap_err().code();
    assert_eq!(code, Code::NotFound);
    assert_eq!(client.stats("work").await.ready, 1);
}
