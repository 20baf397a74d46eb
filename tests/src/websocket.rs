//! A real WebSocket backend (tokio-tungstenite) and a client for it, for tests that reach
//! it through proxyd over `ws://` or `wss://`.
//!
//! The backend greets every connection with [`GREETING`] before the client says anything
//! (a message the server starts), echoes text and binary messages, and obeys a few text
//! commands: `push N` sends N messages `push 1` .. `push N`; `close` starts the closing
//! handshake (code 1000, [`SERVER_CLOSE_REASON`]); `drop` drops the TCP connection
//! without a close frame. It records how each connection began and ended ([`Seen`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The first message of every connection, sent by the backend unprompted.
pub const GREETING: &str = "welcome";
/// The reason the backend gives when it closes on `close`.
pub const SERVER_CLOSE_REASON: &str = "server closing";
/// How long a test waits for a WebSocket event.
pub const WS_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection to the backend ended, as the backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The client sent a close frame with this code (the backend answered it).
    ClientClosed(u16),
    /// The backend closed on `close` and the client answered the close frame.
    ServerClosed,
    /// The backend dropped the connection on `drop`.
    ServerDropped,
    /// The TCP connection ended without a close frame from the client.
    ClientGone,
}

/// What the backend saw of its connections.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each upgrade's request headers (lowercased names), in order.
    pub upgrades: Vec<BTreeMap<String, String>>,
    /// How each connection ended, in order.
    pub ended: Vec<Ended>,
}

/// The WebSocket backend on 127.0.0.1.
pub struct WsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<(Mutex<Seen>, Notify)>,
    task: tokio::task::JoinHandle<()>,
}

impl WsBackend {
    /// Starts the backend on a free port.
    pub async fn start() -> Self {
        let seen: Arc<(Mutex<Seen>, Notify)> = Arc::default();
        let shared = seen.clone();
        let (addr, task) =
            crate::http::serve_each(move |stream| serve(stream, shared.clone())).await;
        Self { addr, seen, task }
    }

    /// Waits until the backend has seen `n` connections end, and returns how they did.
    pub async fn ended(&self, n: usize) -> Vec<Ended> {
        self.until(|seen| (seen.ended.len() >= n).then(|| seen.ended.clone()))
            .await
    }

    /// The request headers of the `n`-th upgrade (from 0), once it has happened.
    pub async fn upgrade(&self, n: usize) -> BTreeMap<String, String> {
        self.until(|seen| seen.upgrades.get(n).cloned()).await
    }

    async fn until<T>(&self, check: impl Fn(&Seen) -> Option<T>) -> T {
        let (seen, changed) = &*self.seen;
        let wait = async {
            loop {
                let notified = changed.notified();
                if let Some(found) = check(&seen.lock().unwrap()) {
                    return found;
                }
                notified.await;
            }
        };
        tokio::time::timeout(WS_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("the backend saw: {:?}", seen.lock().unwrap()))
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &(Mutex<Seen>, Notify), change: impl FnOnce(&mut Seen)) {
    change(&mut seen.0.lock().unwrap());
    seen.1.notify_waiters();
}

async fn serve(stream: TcpStream, seen: Arc<(Mutex<Seen>, Notify)>) {
    let mut headers = BTreeMap::new();
    let capture = |request: &Request, response: Response| {
        for (name, value) in request.headers() {
            let value = value.to_str().unwrap_or("").to_string();
            headers.insert(name.as_str().to_string(), value);
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, capture).await else {
        return;
    };
    record(&seen, |s| s.upgrades.push(headers));
    let ended = converse(&mut ws).await;
    record(&seen, |s| s.ended.push(ended));
}

/// Serves one connection until it ends.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Ended {
    if ws.send(Message::text(GREETING)).await.is_err() {
        return Ended::ClientGone;
    }
    let mut closing = false;
    while let Some(message) = ws.next().await {
        let reply = match message {
            Ok(Message::Text(text)) if text.as_str() == "drop" => return Ended::ServerDropped,
            Ok(Message::Text(text)) if text.as_str() == "close" => {
                closing = true;
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: SERVER_CLOSE_REASON.into(),
                };
                ws.close(Some(frame)).await
            }
            Ok(Message::Text(text)) => match text.as_str().strip_prefix("push ") {
                Some(n) => push(ws, n.parse().unwrap_or(0)).await,
                None => ws.send(Message::Text(text)).await,
            },
            Ok(Message::Binary(data)) => ws.send(Message::Binary(data)).await,
            // tungstenite answers it (and the closing handshake) by itself.
            Ok(Message::Close(Some(frame))) if !closing => {
                return drain_close(ws, Ended::ClientClosed(frame.code.into())).await;
            }
            Ok(Message::Close(_)) if closing => return drain_close(ws, Ended::ServerClosed).await,
            Ok(_) => Ok(()),
            Err(_) => return Ended::ClientGone,
        };
        if reply.is_err() {
            return Ended::ClientGone;
        }
    }
    Ended::ClientGone
}

/// Sends `push 1` .. `push n`.
async fn push<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    n: u32,
) -> tungstenite::Result<()> {
    for i in 1..=n {
        ws.feed(Message::text(format!("push {i}"))).await?;
    }
    ws.flush().await
}

/// Finishes the closing handshake (tungstenite sends the answering close frame while the
/// stream is polled), then lets the connection go.
async fn drain_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    ended: Ended,
) -> Ended {
    while let Some(Ok(_)) = ws.next().await {}
    ended
}

/// Opens a WebSocket to `url` (`ws://HOST/PATH` or `wss://...`; the Host header comes
/// from it) over `stream`, already connected to proxyd (and through TLS for `wss://`).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
) -> tungstenite::Result<WebSocketStream<S>> {
    let (ws, _response) =
        tokio::time::timeout(WS_TIMEOUT, tokio_tungstenite::client_async(url, stream))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "WebSocket handshake")
            })??;
    Ok(ws)
}

/// The next message, at most [`WS_TIMEOUT`] away; `None` once the stream has ended.
pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<tungstenite::Result<Message>> {
    tokio::time::timeout(WS_TIMEOUT, ws.next())
        .await
        .expect("a WebSocket message or the end of the stream")
}
