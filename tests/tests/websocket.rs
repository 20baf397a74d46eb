//! WebSockets (HTTP/1.1 Upgrade) through proxyd to a real WebSocket backend: messages both
//! ways until either side closes, and what a drain does to a WebSocket still open.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use securely_tests::load::Io;
use securely_tests::tls::{self, TlsClient};
use securely_tests::websocket::{Ended, GREETING, SERVER_CLOSE_REASON, WsBackend, connect, next};
use securely_tests::{Stack, StackConfig, alive, http, wait_for};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The grace period of the drain test's stack: longer than a draining proxyd's window
/// for kept-alive connections (1 s), so that the two can be told apart.
const GRACE: Duration = Duration::from_secs(5);
/// How long a WebSocket stays silent in both directions: longer than pingora's 60 s
/// read timeout on client connections.
const IDLE: Duration = Duration::from_secs(65);

/// A stack with the site `app` on a WebSocket backend.
async fn stack_with_backend(config: StackConfig) -> (Stack, WsBackend) {
    let stack = Stack::start_with(config);
    let backend = WsBackend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    (stack, backend)
}

/// A WebSocket to `app.test` through proxyd's HTTP listener, greeted by the backend.
async fn open(stack: &Stack) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(stack.http).await.unwrap();
    let mut ws = connect(tcp, "ws://app.test/chat").await.expect("upgraded");
    assert_eq!(text(&mut ws).await, GREETING, "the backend speaks first");
    ws
}

/// The next message, which must be text.
async fn text<S: Io>(ws: &mut WebSocketStream<S>) -> String {
    match next(ws).await {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends `message` and expects it back unchanged.
async fn round_trip<S: Io>(ws: &mut WebSocketStream<S>, message: Message) {
    ws.send(message.clone()).await.unwrap();
    assert_eq!(next(ws).await.unwrap().unwrap(), message);
}

/// Whether the stream ends (with or without a close frame) before anything else comes.
async fn ends<S: Io>(ws: &mut WebSocketStream<S>) -> bool {
    loop {
        match next(ws).await {
            None | Some(Err(_)) => return true,
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(other)) => panic!("expected the end, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_frames_cross_proxyd_both_ways_until_the_client_closes() {
    let (stack, backend) = stack_with_backend(StackConfig::default()).await;
    let mut ws = open(&stack).await;

    let headers = backend.upgrade(0).await;
    assert_eq!(
        headers["upgrade"].to_lowercase(),
        "websocket",
        "{headers:?}"
    );
    assert_eq!(headers["host"], "app.test", "{headers:?}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers:?}");
    assert!(headers["via"].contains("securely-proxyd"), "{headers:?}");

    converse_then_close(&mut ws).await;
    assert_eq!(backend.ended(1).await, [Ended::ClientClosed(1001)]);
}

/// Text, binary (one larger than any buffer on the way), server-initiated messages and
/// a ping, then the client's close (1001) and the end of the stream.
async fn converse_then_close<S: Io>(ws: &mut WebSocketStream<S>) {
    round_trip(ws, Message::text("hello through proxyd")).await;
    round_trip(ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    round_trip(ws, Message::Binary(Bytes::from(big))).await;
    // Messages the server sends without being asked, one per frame.
    ws.send(Message::text("push 200")).await.unwrap();
    for i in 1..=200 {
        assert_eq!(text(ws).await, format!("push {i}"));
    }
    // Control frames too: the backend's WebSocket library answers a ping.
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = next(ws).await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));

    // The client closes: the backend sees its close frame, answers, and the connection
    // ends on both sides.
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: "tab closed".into(),
    };
    ws.close(Some(frame)).await.unwrap();
    assert!(ends(ws).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_frames_cross_proxyd_to_a_client_trusting_only_the_local_ca() {
    let (stack, backend) = stack_with_backend(StackConfig::default()).await;
    stack.ctl_ok(&["site:secure", "app"]);
    let ca = stack.ctl_ok(&["ca:export"]);
    // As browsers open a WebSocket: HTTP/1.1 by ALPN, SNI the site's name.
    let client = TlsClient::trusting(&ca, tls::HTTP1).unwrap();
    let stream = client.connect(stack.https, "app.test").await.unwrap();
    assert_eq!(tls::negotiated(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let mut ws = connect(stream, "wss://app.test/chat")
        .await
        .expect("upgraded");
    assert_eq!(text(&mut ws).await, GREETING);
    let headers = backend.upgrade(0).await;
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers:?}");
    assert_eq!(headers["host"], "app.test", "{headers:?}");
    converse_then_close(&mut ws).await;
    assert_eq!(backend.ended(1).await, [Ended::ClientClosed(1001)]);

    // The backend closes over TLS too.
    let stream = client.connect(stack.https, "app.test").await.unwrap();
    let mut ws = connect(stream, "wss://app.test/chat")
        .await
        .expect("upgraded");
    assert_eq!(text(&mut ws).await, GREETING);
    ws.send(Message::text("close")).await.unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(Ok(Message::Close(Some(_))))
    ));
    assert!(ends(&mut ws).await);
    assert_eq!(backend.ended(2).await[1], Ended::ServerClosed);

    // ws:// to a secure site is sent to https, as any plain-HTTP request is.
    let tcp = TcpStream::connect(stack.http).await.unwrap();
    let refused = connect(tcp, "ws://app.test/chat").await.unwrap_err();
    assert!(refused.to_string().contains("308"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_backend_close_and_either_side_dropping_end_the_other_side() {
    let (stack, backend) = stack_with_backend(StackConfig::default()).await;

    // The backend closes: its close frame reaches the client, whose answer reaches the
    // backend, and the connection ends.
    let mut ws = open(&stack).await;
    ws.send(Message::text("close")).await.unwrap();
    match next(&mut ws).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), SERVER_CLOSE_REASON);
        }
        other => panic!("expected the backend's close frame, got {other:?}"),
    }
    assert!(ends(&mut ws).await);
    assert_eq!(backend.ended(1).await, [Ended::ServerClosed]);

    // The backend drops its connection without a close frame: the client's ends too.
    let mut ws = open(&stack).await;
    ws.send(Message::text("drop")).await.unwrap();
    assert!(ends(&mut ws).await);
    assert_eq!(backend.ended(2).await[1], Ended::ServerDropped);

    // The client goes without a close frame (a killed tab): the backend's connection ends.
    let ws = open(&stack).await;
    drop(ws);
    assert_eq!(backend.ended(3).await[2], Ended::ClientGone);

    // A WebSocket for a host no site serves gets proxyd's 404, not an upgrade.
    let tcp = TcpStream::connect(stack.http).await.unwrap();
    let refused = connect(tcp, "ws://nowhere.test/chat").await.unwrap_err();
    assert!(refused.to_string().contains("404"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_outlives_every_http_timeout() {
    let (stack, _backend) = stack_with_backend(StackConfig::default()).await;
    let mut ws = open(&stack).await;
    // Neither side says anything, as a hot-reload socket between two edits.
    tokio::time::sleep(IDLE).await;
    ws.send(Message::text("push 1")).await.unwrap();
    assert_eq!(text(&mut ws).await, "push 1");
    round_trip(&mut ws, Message::text("still here")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_open_at_a_restart_lives_on_the_old_proxyd_until_the_grace_period_ends() {
    let config = StackConfig {
        extra_yaml: format!("grace_period_seconds: {}\n", GRACE.as_secs()),
        ..StackConfig::default()
    };
    let (stack, backend) = stack_with_backend(config).await;
    let web = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "web", &web.addr.to_string()]);
    let mut ws = open(&stack).await;
    // An HTTP connection kept alive, idle after one request, on the same instance.
    let tcp = TcpStream::connect(stack.http).await.unwrap();
    let (mut kept, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/")
        .header("host", "web.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(kept.send_request(request).await.unwrap().status(), 200);

    let old = stack.ready_pid("proxyd").unwrap();
    let restart_began = Instant::now();
    stack.ctl_ok(&["restart", "proxyd"]);
    let restarted = Instant::now();
    assert!(
        alive(old),
        "the old proxyd drains: a WebSocket is open on it"
    );

    // The WebSocket still carries messages both ways, through the old instance.
    round_trip(&mut ws, Message::text("after the restart")).await;
    ws.send(Message::text("push 3")).await.unwrap();
    for i in 1..=3 {
        assert_eq!(text(&mut ws).await, format!("push {i}"));
    }
    // The idle kept-alive connection is closed after the window for one more request:
    // the WebSocket does not hold it.
    let closing = async {
        while !kept.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(GRACE / 2, closing)
        .await
        .expect("the idle kept-alive connection is closed");
    assert!(alive(old));
    // New WebSockets go to the new instance.
    let mut fresh = open(&stack).await;
    round_trip(&mut fresh, Message::text("new instance")).await;

    // The grace period over, the old instance closes the WebSocket (no close frame) and
    // exits.
    assert!(ends(&mut ws).await);
    let closed = Instant::now();
    assert!(
        closed - restart_began >= GRACE && closed - restarted < GRACE + Duration::from_secs(2),
        "closed {:?} after the restart began, {:?} after it ended",
        closed - restart_began,
        closed - restarted
    );
    assert_eq!(backend.ended(1).await, [Ended::ClientGone]);
    wait_for("the old proxyd to exit", Duration::from_secs(5), || {
        (!alive(old)).then_some(())
    });
    let log = stack.log();
    assert!(log.contains("1 upgraded (WebSockets)"), "{log}");
    round_trip(&mut fresh, Message::text("still served")).await;
}
