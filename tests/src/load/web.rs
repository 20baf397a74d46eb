//! Web load: `GET /` through proxyd over new and kept-alive connections, over plain HTTP
//! or over TLS (the client trusting only the local CA, SNI the site's name).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Shared;
use crate::tls::TlsClient;

/// Where the web load goes.
#[derive(Clone)]
pub enum Web {
    /// proxyd's HTTP listener.
    Http(SocketAddr),
    /// proxyd's TLS listener, reached with `client` (SNI: the host asked for).
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

impl Web {
    /// The scheme, for failure lines.
    pub(super) fn scheme(&self) -> &'static str {
        match self {
            Self::Http(_) => "HTTP",
            Self::Https { .. } => "HTTPS",
        }
    }

    /// A new connection for requests to `host`.
    async fn connect(&self, host: &str) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Self::Http(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
            Self::Https { addr, client } => Box::new(client.connect(*addr, host).await?),
        })
    }
}

/// What the web load over one scheme saw.
#[derive(Debug, Default)]
pub(super) struct WebCounters {
    /// Requests over new connections answered 200.
    pub new_ok: AtomicU64,
    /// Requests over kept-alive connections answered 200.
    pub kept_ok: AtomicU64,
    /// A kept-alive connection closed by the server between two requests, the request
    /// then sent again on a new connection (RFC 9112 9.3.1; what browsers and curl do).
    pub kept_reconnects: AtomicU64,
}

/// One request per new connection, until the load stops.
pub(super) async fn new_connections(web: Web, host: String, shared: Arc<Shared>) {
    let scheme = web.scheme();
    let counters = shared.counters.web(&web);
    while shared.running() {
        let reply = match web.connect(&host).await {
            Ok(stream) => crate::http::get_on(stream, &host, "/").await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(reply) if reply.status == 200 => {
                counters.new_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => shared.fail(format!(
                "{scheme} (new connection): status {}: {}",
                reply.status, reply.body
            )),
            Err(e) => shared.fail(format!("{scheme} (new connection): {e}")),
        }
    }
}

/// Requests on one connection after another, each connection kept alive as long as the
/// server keeps it.
pub(super) async fn kept_alive(web: Web, host: String, shared: Arc<Shared>) {
    let scheme = web.scheme();
    let counters = shared.counters.web(&web);
    while shared.running() {
        let stream = match web.connect(&host).await {
            Ok(stream) => stream,
            Err(e) => {
                shared.fail(format!("{scheme} (keep-alive): connect: {e}"));
                continue;
            }
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            shared.fail(format!("{scheme} (keep-alive): handshake failed"));
            continue;
        };
        tokio::spawn(connection);
        let mut served_here = 0;
        while shared.running() {
            if sender.ready().await.is_err() {
                // Closed by the server between requests: open a new one.
                counters.kept_reconnects.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let request = Request::get("/")
                .header("host", &host)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let sent =
                tokio::time::timeout(crate::http::REQUEST_TIMEOUT, sender.send_request(request));
            match sent.await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    match response.into_body().collect().await {
                        Ok(_) if status == 200 => {
                            counters.kept_ok.fetch_add(1, Ordering::Relaxed);
                            served_here += 1;
                        }
                        Ok(_) => shared.fail(format!("{scheme} (keep-alive): status {status}")),
                        Err(e) => shared.fail(format!("{scheme} (keep-alive): body: {e}")),
                    }
                }
                // Closed (or reset) as the request went out, before any response
                // byte, on a connection that had served before: the server closed it
                // as idle. The idempotent GET is sent again on a new connection, as
                // HTTP clients do (RFC 9112 9.3.1).
                Ok(Err(e)) if served_here > 0 && closed_before_response(&e) => {
                    counters.kept_reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(e)) => {
                    shared.fail(format!("{scheme} (keep-alive): {e}"));
                    break;
                }
                Err(_) => {
                    shared.fail(format!("{scheme} (keep-alive): timed out"));
                    break;
                }
            }
        }
    }
}

fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    matches!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    )
}
