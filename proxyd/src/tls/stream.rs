//! A TLS connection as pingora's HTTP app takes it: tokio-rustls's server stream over the
//! accepted TCP stream, with what pingora asks of a stream (its id, socket and timing
//! digests from the TCP stream, the TLS digest, the protocol chosen by ALPN) and a peek
//! at the first decrypted bytes, which are then read again.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

/// How many decrypted bytes a peek reads at most.
const PEEK_BUFFER: usize = 4096;

/// An established TLS connection.
#[derive(Debug)]
pub struct TlsConnection {
    tls: TlsStream<Stream>,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    /// Decrypted bytes a peek read, handed out again before anything else.
    peeked: Vec<u8>,
}

impl TlsConnection {
    /// Wraps a stream whose handshake is complete.
    pub fn new(tls: TlsStream<Stream>) -> Self {
        let session = tls.get_ref().1;
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        let version = session
            .protocol_version()
            .and_then(|version| version.as_str())
            .unwrap_or("unknown");
        let digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        Self {
            tls,
            digest,
            alpn,
            peeked: Vec::new(),
        }
    }

    fn tcp(&self) -> &Stream {
        self.tls.get_ref().0
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.peeked.is_empty() {
            let n = self.peeked.len().min(buf.remaining());
            buf.put_slice(&self.peeked[..n]);
            self.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for TlsConnection {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.tls).await {
            tracing::debug!("closing a TLS connection: {e}");
        }
    }
}

impl UniqueID for TlsConnection {
    fn id(&self) -> UniqueIDType {
        self.tcp().id()
    }
}

impl Ssl for TlsConnection {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConnection {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tcp().get_timing_digest()
    }
}

impl GetProxyDigest for TlsConnection {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tcp().get_proxy_digest()
    }
}

impl GetSocketDigest for TlsConnection {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tcp().get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConnection {
    /// Waits for the first decrypted bytes and keeps them to be read again.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.peeked.is_empty() {
            let mut chunk = vec![0u8; PEEK_BUFFER];
            let n = self.tls.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            chunk.truncate(n);
            self.peeked = chunk;
        }
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        Ok(true)
    }
}
