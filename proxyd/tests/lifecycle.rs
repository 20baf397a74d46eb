//! Restart, shutdown and robustness, against the real binary.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Backend, Fetched, Proxyd, free_port, get};
use hyper::StatusCode;
use nix::sys::signal::Signal;
use securely_proto::daemon::DrainRequest;
use securely_proto::daemon::daemon_control_client::DaemonControlClient;
use securely_proto::proxy::ListSitesRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a stop with nothing in flight may take.
const PROMPT_EXIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn sites_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let port = free_port();
    let mut proxyd = Proxyd::start(dir.path(), port, 30).await;
    proxyd
        .link("keep", &backend.target(), &["kept.example"])
        .await;

    proxyd.signal(Signal::SIGTERM);
    let status = proxyd.wait_exit(PROMPT_EXIT).await;
    assert!(status.success(), "{status}");
    drop(proxyd);

    let proxyd = Proxyd::start(dir.path(), port, 30).await;
    let sites = proxyd
        .admin()
        .await
        .list_sites(ListSitesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites;
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].name, "keep");
    assert_eq!(sites[0].target, backend.target());
    assert_eq!(sites[0].hostnames, vec!["kept.example"]);
    for host in ["keep.test", "kept.example"] {
        let response = get(proxyd.http, Some(host), "/").await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_by_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    // A grace period far longer than the test may take: exiting early proves the drain
    // ends by work, not by timer.
    let mut proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    proxyd.link("slow", &backend.target(), &[]).await;
    // An idle gRPC client that stays connected must not hold the exit up.
    let mut admin = proxyd.admin().await;
    admin.list_sites(ListSitesRequest {}).await.unwrap();

    let http = proxyd.http;
    let in_flight = slow_request_in_flight(&proxyd, &backend).await;
    let signalled = Instant::now();
    proxyd.signal(Signal::SIGTERM);

    // New connections are refused while the request is still in flight.
    let mut refused = false;
    while !in_flight.is_finished() {
        if tokio::net::TcpStream::connect(http).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "proxyd kept accepting after SIGTERM");

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.echoed()["host"], "slow.test");
    let status = proxyd.wait_exit(PROMPT_EXIT).await;
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Backend::SLOW + PROMPT_EXIT,
        "exit took {:?}",
        signalled.elapsed()
    );
    assert!(proxyd.log().contains("every request finished"));
    assert!(!proxyd.log().contains("still shared"), "{}", proxyd.log());
    drop(admin);
}

#[tokio::test]
async fn sigint_stops_at_once_even_with_a_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    proxyd.link("slow", &backend.target(), &[]).await;
    // A gRPC client that stays connected must not hold the stop (or the store) up.
    let mut admin = proxyd.admin().await;
    admin.list_sites(ListSitesRequest {}).await.unwrap();

    let in_flight = slow_request_in_flight(&proxyd, &backend).await;
    stop_cuts_the_request_short(&mut proxyd, Signal::SIGINT, in_flight).await;
    assert!(
        !proxyd.log().contains("still shared"),
        "the store was not closed: {}",
        proxyd.log()
    );
    drop(admin);
}

#[tokio::test]
async fn garbage_on_either_socket_does_not_take_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    proxyd.link("app", &backend.target(), &[]).await;

    // HTTP: binary noise, an invalid request line, an unknown HTTP version and a header
    // line without a colon each get a 4xx; a request cut off mid-header by a client that
    // hangs up gets nothing (pingora, like nginx, treats it as a closed connection).
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (payload, answered) in [
        (noise.as_slice(), true),
        (b"\x00\x01\x02 NOT HTTP\r\n\r\n", true),
        (b"GET / HTTP/9.9\r\nHost: app.test\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nBroken\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nCut", false),
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxyd.http).await.unwrap();
        stream.write_all(payload).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("proxyd closes the connection")
            .unwrap();
        let shown = String::from_utf8_lossy(&answer);
        let sent = String::from_utf8_lossy(&payload[..payload.len().min(40)]);
        if answered {
            assert!(answer.starts_with(b"HTTP/1.1 4"), "{sent:?}: {shown:?}");
        } else {
            assert!(answer.is_empty(), "{sent:?}: {shown:?}");
        }
    }

    // gRPC: noise instead of an HTTP/2 preface, and a preface followed by noise.
    for payload in [
        noise.as_slice(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff",
    ] {
        let mut stream = tokio::net::UnixStream::connect(&proxyd.socket)
            .await
            .unwrap();
        let _ = stream.write_all(payload).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    }

    assert!(proxyd.is_running());
    let sites = proxyd
        .admin()
        .await
        .list_sites(ListSitesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites;
    assert_eq!(sites.len(), 1);
    let response = get(proxyd.http, Some("app.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert!(!proxyd.log().contains("panicked"), "{}", proxyd.log());
}

#[tokio::test]
async fn a_drain_rpc_stops_it_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    let channel = securely_core::rpc::connect(&proxyd.socket).await.unwrap();
    DaemonControlClient::new(channel)
        .drain(DrainRequest {})
        .await
        .unwrap();
    let status = proxyd.wait_exit(PROMPT_EXIT).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut proxyd = Proxyd::start(dir.path(), free_port(), 0).await;
    proxyd.link("slow", &backend.target(), &[]).await;

    let in_flight = slow_request_in_flight(&proxyd, &backend).await;
    stop_cuts_the_request_short(&mut proxyd, Signal::SIGTERM, in_flight).await;
    assert!(
        proxyd.log().contains("grace period of 0s over"),
        "{}",
        proxyd.log()
    );
}

/// Sends a request to the slow site and returns once the backend holds it.
async fn slow_request_in_flight(
    proxyd: &Proxyd,
    backend: &Backend,
) -> tokio::task::JoinHandle<Result<Fetched, Box<dyn std::error::Error + Send + Sync>>> {
    let http = proxyd.http;
    let in_flight = tokio::spawn(async move { get(http, Some("slow.test"), "/slow").await });
    while backend.received.load(Ordering::SeqCst) == 0 {
        assert!(
            !in_flight.is_finished(),
            "the request ended before reaching the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    in_flight
}

/// Sends `signal` and checks that proxyd exits 0 before the slow request could finish,
/// which fails.
async fn stop_cuts_the_request_short(
    proxyd: &mut Proxyd,
    signal: Signal,
    in_flight: tokio::task::JoinHandle<Result<Fetched, Box<dyn std::error::Error + Send + Sync>>>,
) {
    let signalled = Instant::now();
    proxyd.signal(signal);
    let status = proxyd.wait_exit(PROMPT_EXIT).await;
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Backend::SLOW,
        "{signal} waited for the request ({:?})",
        signalled.elapsed()
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut-off request should fail"
    );
}
