//! Web load: `GET /` through proxyd over new and kept-alive connections, over plain HTTP
//! or over TLS (the client trusting only the local CA, SNI the site's name), HTTP/1.1 or
//! HTTP/2 as ALPN decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Shared;
use crate::tls::{self, TlsClient};

/// Where the web load goes.
#[derive(Clone)]
pub enum Web {
    /// proxyd's HTTP listener.
    Http(SocketAddr),
    /// proxyd's TLS listener, reached with `client` (SNI: the host asked for); HTTP/2 when
    /// the client offers it and the server picks it, HTTP/1.1 otherwise.
    Https {
        /// The listener.
        addr: SocketAddr,
        /// A client trusting only the local CA.
        client: TlsClient,
    },
}

/// A connection to proxyd, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What the web load over one protocol saw.
#[derive(Debug, Default)]
pub(super) struct WebCounters {
    /// Requests over new connections answered 200.
    pub new_ok: AtomicU64,
    /// Requests over kept-alive connections answered 200.
    pub kept_ok: AtomicU64,
    /// A kept-alive connection closed by the server between two requests (or, over
    /// HTTP/2, told to go away), the request then sent again on a new connection
    /// (RFC 9112 9.3.1, RFC 9113 8.7; what browsers and curl do).
    pub kept_reconnects: AtomicU64,
    /// Requests on new connections that an HTTP/2 GOAWAY refused, sent again.
    pub new_refused: AtomicU64,
}

/// The protocol a connection speaks, for counters and failure lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS.
    H2,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
            Self::H2 => "HTTPS (h2)",
        }
    }
}

/// A connection's request sender, either protocol.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Waits until a request can be sent; an error means the connection is closing.
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::H1(s) => s.send_request(request).await,
            Self::H2(s) => s.send_request(request).await,
        }
    }
}

/// Opens a connection to `web` for `host`, with its HTTP handshake done.
async fn open(web: &Web, host: &str) -> Result<(Protocol, Sender), String> {
    let (protocol, io): (Protocol, Box<dyn Io>) = match web {
        Web::Http(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await;
            (
                Protocol::Http,
                Box::new(tcp.map_err(|e| format!("connect: {e}"))?),
            )
        }
        Web::Https { addr, client } => {
            let stream = client.connect(*addr, host).await;
            let stream = stream.map_err(|e| format!("TLS: {e}"))?;
            match tls::negotiated(&stream).as_deref() {
                Some(b"h2") => (Protocol::H2, Box::new(stream)),
                _ => (Protocol::Https, Box::new(stream)),
            }
        }
    };
    let io = TokioIo::new(io);
    let handshake = |e: hyper::Error| format!("HTTP handshake: {e}");
    let sender = if protocol == Protocol::H2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(handshake)?;
        tokio::spawn(connection);
        Sender::H2(sender)
    } else {
        let (sender, connection) = http1::handshake(io).await.map_err(handshake)?;
        tokio::spawn(connection);
        Sender::H1(sender)
    };
    Ok((protocol, sender))
}

/// Sends `GET /` for `host` and reads the whole response: its status, or the error.
async fn get(sender: &mut Sender, host: &str) -> Result<u16, RequestError> {
    let request = Request::get("/")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let sent = tokio::time::timeout(crate::http::REQUEST_TIMEOUT, sender.send(request)).await;
    let response = sent
        .map_err(|_| RequestError::TimedOut)?
        .map_err(RequestError::Send)?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await;
    body.map_err(|e| RequestError::Body(e.to_string()))?;
    Ok(status)
}

/// Why a request got no answer.
enum RequestError {
    TimedOut,
    Send(hyper::Error),
    Body(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut => f.write_str("timed out"),
            // With its cause: hyper's text alone ("http2 error") hides the reason.
            Self::Send(e) => match std::error::Error::source(e) {
                Some(cause) => write!(f, "{e}: {cause}"),
                None => write!(f, "{e}"),
            },
            Self::Body(e) => write!(f, "body: {e}"),
        }
    }
}

/// One request per new connection, until the load stops.
pub(super) async fn new_connections(web: Web, host: String, shared: Arc<Shared>) {
    while shared.running() {
        match open(&web, &host).await {
            Ok((protocol, mut sender)) => {
                let label = protocol.label();
                match get(&mut sender, &host).await {
                    Ok(200) => {
                        let counters = shared.counters.web(protocol);
                        counters.new_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(status) => shared.fail(format!("{label} (new connection): status {status}")),
                    // The server's GOAWAY said this stream was not processed: sent again
                    // on a new connection, as HTTP/2 clients may (RFC 9113 6.8).
                    Err(RequestError::Send(e)) if refused_by_goaway(&e) => {
                        let counters = shared.counters.web(protocol);
                        counters.new_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => shared.fail(format!("{label} (new connection): {e}")),
                }
            }
            Err(e) => shared.fail(format!("{} (new connection): {e}", scheme(&web))),
        }
    }
}

/// Requests on one connection after another, each connection kept alive as long as the
/// server keeps it.
pub(super) async fn kept_alive(web: Web, host: String, shared: Arc<Shared>) {
    while shared.running() {
        let (protocol, mut sender) = match open(&web, &host).await {
            Ok(opened) => opened,
            Err(e) => {
                shared.fail(format!("{} (keep-alive): {e}", scheme(&web)));
                continue;
            }
        };
        let (label, counters) = (protocol.label(), shared.counters.web(protocol));
        let mut served_here = 0;
        while shared.running() {
            if sender.ready().await.is_err() {
                // Closed by the server between requests: open a new one.
                counters.kept_reconnects.fetch_add(1, Ordering::Relaxed);
                break;
            }
            match get(&mut sender, &host).await {
                Ok(200) => {
                    counters.kept_ok.fetch_add(1, Ordering::Relaxed);
                    served_here += 1;
                }
                Ok(status) => shared.fail(format!("{label} (keep-alive): status {status}")),
                // Closed (or reset, or refused by HTTP/2) as the request went out, before
                // any response byte, on a connection that had served before: the server
                // closed it as idle. The GET is sent again on a new connection, as HTTP
                // clients do (RFC 9112 9.3.1, RFC 9113 8.7).
                Err(RequestError::Send(e)) if served_here > 0 && not_processed(&e) => {
                    counters.kept_reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    shared.fail(format!("{label} (keep-alive): {e}"));
                    break;
                }
            }
        }
    }
}

/// The scheme of `web`, for failures before a protocol is known.
fn scheme(web: &Web) -> &'static str {
    match web {
        Web::Http(_) => Protocol::Http.label(),
        Web::Https { .. } => Protocol::Https.label(),
    }
}

/// Whether the request was never processed: the connection closed or reset before a
/// response byte, or HTTP/2 refused the stream (REFUSED_STREAM, or beyond the server's
/// GOAWAY's last stream).
fn not_processed(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || graceful_goaway(h2);
        }
        source = error.source();
    }
    false
}

/// A stream the server's graceful GOAWAY (NO_ERROR) left beyond its last stream id.
fn graceful_goaway(h2: &h2::Error) -> bool {
    h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
}

/// Whether the server's GOAWAY refused the request's stream: a stream beyond the GOAWAY's
/// last stream id was not processed and may be sent again (RFC 9113 6.8).
fn refused_by_goaway(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return graceful_goaway(h2);
        }
        source = error.source();
    }
    false
}
