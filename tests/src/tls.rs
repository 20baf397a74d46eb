//! A TLS client for the cross-process tests that trusts only the CA it is given (the local
//! CA, as `securelyctl ca:export` prints it), as a browser told to trust it would: no
//! system roots, the server's certificate checked against the name asked for (SNI).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// ALPN for HTTP/1.1 only.
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN offering HTTP/2, then HTTP/1.1, as browsers do.
pub const H2_THEN_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS client trusting one CA.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    /// A client trusting only the certificates in `ca_pem`, offering `alpn`.
    pub fn trusting(ca_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in the CA's PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The same client, sending no SNI (the server's certificate is still checked against
    /// the name given to [`TlsClient::connect`]).
    pub fn without_sni(&self) -> Self {
        let mut config = rustls::ClientConfig::clone(self.connector.config());
        config.enable_sni = false;
        Self {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// Connects to `addr` and completes a handshake for `server_name` (sent as SNI and
    /// checked against the server's certificate).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tcp = TcpStream::connect(addr).await?;
        self.connector.connect(name, tcp).await
    }
}

/// The protocol the server chose by ALPN, if any.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// The server's own certificate (DER), as the handshake presented it.
pub fn leaf(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let chain = stream.get_ref().1.peer_certificates()?;
    Some(chain.first()?.to_vec())
}
