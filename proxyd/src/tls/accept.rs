//! The TLS handshake of a connection on a TLS listener, done by proxyd's app rather than
//! by pingora's listener.
//!
//! pingora's own TLS listener would do the handshake before its app sees the connection;
//! proxyd does it inside the app ([`crate::connections::DrainAwareApp`]) for two reasons.
//! A connection whose handshake fails then still reaches the app, so a drain counts it to
//! its end instead of waiting for it in vain; and the client's hello is read before a
//! certificate is chosen (tokio-rustls's lazy acceptor), so a name outside the dev TLD is
//! answered with the alert `unrecognized_name` (rustls itself would send
//! `access_denied` when its resolver has no certificate). rustls still picks the
//! certificate through its resolver ([`super::resolver`]), and ALPN offers h2, then
//! HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::Stream;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::LazyConfigAcceptor;

use super::certs::Certs;
use super::resolver::Resolver;
use super::sni::CertFor;
use super::stream::TlsConnection;

/// How long a client has to complete its handshake, from its first bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A fatal `unrecognized_name` alert (RFC 8446 6.2), as a plaintext record.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Why a TLS connection was not established.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client asked for a name the CA may not certify.
    #[error("no certificate for {0:?} (outside the dev TLD): unrecognized_name")]
    UnrecognizedName(String),
    /// The handshake failed (or the client sent no TLS).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The client took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake not done within {}s", HANDSHAKE_TIMEOUT.as_secs())]
    TimedOut,
}

/// What serves TLS on proxyd's TLS listeners.
#[derive(Debug)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    certs: Arc<Certs>,
    listeners: Vec<SocketAddr>,
}

impl TlsAcceptor {
    /// TLS for connections accepted on `listeners`, with certificates from `certs`.
    pub fn new(certs: Arc<Certs>, listeners: Vec<SocketAddr>) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver::new(certs.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            certs,
            listeners,
        })
    }

    /// Whether `stream` came in on one of the TLS listeners.
    pub fn serves(&self, stream: &Stream) -> bool {
        let Some(digest) = stream.get_socket_digest() else {
            return false;
        };
        let Some(local) = digest.local_addr().and_then(|a| a.as_inet()) else {
            return false;
        };
        self.listeners.iter().any(|listener| {
            listener.port() == local.port()
                && (listener.ip() == local.ip().to_canonical() || listener.ip().is_unspecified())
        })
    }

    /// Completes the handshake of `stream`, whose first bytes have arrived.
    pub async fn accept(&self, stream: Stream) -> Result<Stream, AcceptError> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = timeout_at(deadline, acceptor)
            .await
            .map_err(|_| AcceptError::TimedOut)?
            .map_err(AcceptError::Handshake)?;
        let server_name = start.client_hello().server_name().map(str::to_string);
        if self.certs.choose(server_name.as_deref()) == CertFor::Refused {
            let mut io = start.io;
            // The client is told why; it may be gone already.
            let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            let _ = io.shutdown().await;
            return Err(AcceptError::UnrecognizedName(
                server_name.unwrap_or_default(),
            ));
        }
        let tls = timeout_at(deadline, start.into_stream(self.config.clone()))
            .await
            .map_err(|_| AcceptError::TimedOut)?
            .map_err(AcceptError::Handshake)?;
        Ok(Box::new(TlsConnection::new(tls)))
    }
}
