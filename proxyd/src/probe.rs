//! Readiness probes: proof that the proxy answers on a listener, over plain HTTP or TLS.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::ca::LocalCa;
use crate::tls::names::FALLBACK_NAME;

/// The request a readiness probe sends. It has no Host, so proxyd answers it with its own
/// 400 page and never forwards it to a site.
const PROBE_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nUser-Agent: securely-proxyd readiness probe\r\nConnection: close\r\n\r\n";

/// Proves that the proxy answers plain HTTP on `addr`: connects (to loopback when `addr`
/// is a wildcard), sends a request and waits for a status line.
pub async fn http(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    bounded(timeout, async {
        exchange(TcpStream::connect(reachable(addr)).await?).await
    })
    .await
}

/// Proves that the proxy answers https on `addr`: a handshake for `localhost` whose
/// certificate must verify against `ca` alone, then a request as [`http`] sends it.
pub async fn https(addr: SocketAddr, ca: &LocalCa, timeout: Duration) -> io::Result<()> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|e| invalid(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(FALLBACK_NAME).map_err(|e| invalid(e.to_string()))?;
    bounded(timeout, async {
        let tcp = TcpStream::connect(reachable(addr)).await?;
        exchange(connector.connect(name, tcp).await?).await
    })
    .await
}

/// `addr`, or loopback on its port when it is a wildcard.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Sends the probe's request on `stream` and waits for a status line.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> io::Result<()> {
    stream.write_all(PROBE_REQUEST).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    if head.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {:?}", String::from_utf8_lossy(&head)),
        ))
    }
}

async fn bounded(timeout: Duration, work: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )
    })?
}
