//! Bad input never takes the daemon down, and a drain does not wait out long polls.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Home, QUEUE_YAML, Queued};
use nix::sys::signal::Signal;
use securely_proto::queue::{ListFailedRequest, PushRequest, ReserveRequest};
use tonic::Code;

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("an invalid argument was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{field}: {}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_arguments_are_refused_by_name_and_the_daemon_keeps_serving() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    let push = |queue: &str, payload: Vec<u8>, delay_seconds, max_tries| PushRequest {
        queue: queue.into(),
        payload,
        delay_seconds,
        max_tries,
        ..Default::default()
    };
    let q = &mut client.0;
    assert_invalid(q.push(push("", vec![], 0, 0)).await, "queue");
    assert_invalid(q.push(push("with space", vec![], 0, 0)).await, "queue");
    assert_invalid(q.push(push(&"q".repeat(129), vec![], 0, 0)).await, "queue");
    assert_invalid(
        q.push(push("q", vec![0; 1024 * 1024 + 1], 0, 0)).await,
        "payload",
    );
    assert_invalid(
        q.push(push("q", vec![], u64::MAX, 0)).await,
        "delay_seconds",
    );
    assert_invalid(q.push(push("q", vec![], 0, 1001)).await, "max_tries");
    let reserve = |timeout_seconds, wait_seconds| ReserveRequest {
        queue: "q".into(),
        timeout_seconds,
        wait_seconds,
        ..Default::default()
    };
    assert_invalid(q.reserve(reserve(u64::MAX, 0)).await, "timeout_seconds");
    assert_invalid(q.reserve(reserve(0, 301)).await, "wait_seconds");
    assert_invalid(client.ack(0).await, "id");
    assert_invalid(client.fail(0, "e").await, "id");
    assert_invalid(
        client
            .0
            .list_failed(ListFailedRequest {
                queue: "a/b".into(),
            })
            .await,
        "queue",
    );
    // Unknown ids are NOT_FOUND, not a crash.
    assert_eq!(
        client.ack(u64::MAX).await.unwrap_err().code(),
        Code::NotFound
    );

    assert!(queued.alive());
    let id = client.push("q", b"still fine").await;
    assert_eq!(client.reserve("q", 0, 0).await.unwrap().id, id);
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_take_the_daemon_down() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let socket = queued.socket.clone();
    tokio::task::spawn_blocking(move || {
        let garbage: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0xff; 4096],
            // An HTTP/2 preface, then a frame header announcing 16 MiB of nothing.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01",
            b"",
        ];
        for bytes in garbage {
            let mut stream = UnixStream::connect(&socket).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = stream.write_all(bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
        }
    })
    .await
    .unwrap();
    assert!(queued.alive(), "{}", home.log());
    let mut client = queued.client().await;
    let id = client.push("q", b"after garbage").await;
    assert_eq!(client.reserve("q", 0, 0).await.unwrap().id, id);
}

#[tokio::test]
async fn sigterm_during_a_long_reserve_wait_exits_promptly() {
    let home = Home::new(QUEUE_YAML);
    let mut queued = Queued::start(&home).await;
    let mut client = queued.client().await;
    // An idle open connection must not hold the drain up either.
    let mut idle = queued.client().await;
    idle.push("other", b"x").await;
    let waiting = tokio::spawn(async move { client.reserve("idle", 0, 300).await });
    // Let the call reach the daemon and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    let signalled = Instant::now();
    queued.signal(Signal::SIGTERM);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting Reserve was answered promptly")
        .unwrap();
    let status = answer.expect_err("no job was pushed");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::NotFound),
        "{status:?}"
    );
    let exit = queued
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("queued exits after SIGTERM");
    assert!(exit.success(), "{exit}\n{}", home.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    drop(idle);
}
