//! Reserve from several queues in priority order (Laravel's `--queue=high,default`), over
//! gRPC against the real daemon.

mod common;

use std::time::Duration;

use common::{Home, QUEUE_YAML, Queued};
use securely_proto::queue::ReserveRequest;
use tonic::Code;

fn from(queues: &[&str], wait_seconds: u64) -> ReserveRequest {
    ReserveRequest {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        timeout_seconds: 60,
        wait_seconds,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_first_queue_with_a_job_gives_it() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let low = client.push("low", b"low 1").await;
    let high = client.push("high", b"high 1").await;
    let low_2 = client.push("low", b"low 2").await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let job = client
            .0
            .reserve(from(&["high", "low"], 0))
            .await
            .unwrap()
            .into_inner();
        order.push((job.id, job.queue));
    }
    assert_eq!(
        order,
        vec![
            (high, "high".into()),
            (low, "low".into()),
            (low_2, "low".into())
        ]
    );
    let empty = client
        .0
        .reserve(from(&["high", "low"], 0))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::NotFound);
    assert!(empty.message().contains("high,low"), "{empty:?}");
}

#[tokio::test]
async fn a_wait_on_several_queues_ends_with_a_job_pushed_to_any_of_them() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let mut waiting = client.clone();
    let waiter = tokio::spawn(async move { waiting.0.reserve(from(&["high", "low"], 10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = client.push("low", b"late").await;
    let job = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by a push to its second queue")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!((job.id, job.queue.as_str()), (id, "low"));
}

#[tokio::test]
async fn bad_queue_lists_are_refused_by_name() {
    let home = Home::new(QUEUE_YAML);
    let queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let too_many: Vec<String> = (0..17).map(|i| format!("q{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let mut both = from(&["a"], 0);
    both.queue = "b".into();
    for (request, says) in [
        (from(&["a", "a"], 0), "named twice"),
        (from(&too_many, 0), "exceeds the limit"),
        (from(&["a", "bad name"], 0), "queues"),
        (both, "not both"),
    ] {
        let status = client.0.reserve(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
}
