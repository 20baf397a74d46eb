//! Every socket answers a gRPC call whatever `:authority` the client sends: the socket
//! path (raw, as grpc-java and older grpcurl send it, or percent-encoded, as grpc-core
//! does), `localhost`, or none. Upstream h2 resets the first two with PROTOCOL_ERROR
//! (see vendor/h2/SECURELY-PATCH.md).
//!
//! The calls go through the `h2` client over a Unix stream. h2 builds `:authority` from an
//! `http::Uri`, which can hold neither a socket path nor a `:scheme` without an authority,
//! so [`RewriteHeaders`] swaps the request's header block for one this test encodes
//! itself; everything else (settings, flow control, the response and its trailers) is
//! h2's.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use securely_tests::Stack;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long one health check may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The method every call asks for.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test(flavor = "multi_thread")]
async fn every_socket_serves_the_authorities_grpc_clients_send() {
    let stack = Stack::start();
    for socket in ["control", "proxyd", "dnsd", "queued"] {
        let path = if socket == "control" {
            stack.control_socket()
        } else {
            stack.socket(socket)
        };
        let raw = path.to_str().expect("a UTF-8 temp path").to_string();
        let authorities = [
            // grpc-java, older grpcurl.
            Some(raw.clone()),
            // grpc-core (grpcio 1.85 sends `tmp%2F...%2Fcontrol.sock`).
            Some(raw.trim_start_matches('/').replace('/', "%2F")),
            Some(raw.replace('/', "%2F")),
            // tonic, grpc-go, Debian's grpcio 1.51.
            Some("localhost".to_string()),
            None,
        ];
        for authority in authorities {
            let status =
                tokio::time::timeout(CALL_TIMEOUT, health_check(&path, authority.as_deref()))
                    .await
                    .unwrap_or_else(|_| panic!("{socket}: no answer within {CALL_TIMEOUT:?}"))
                    .unwrap_or_else(|e| panic!("{socket} with :authority {authority:?}: {e:#}"));
            assert_eq!(
                status,
                ServingStatus::Serving,
                "{socket} with :authority {authority:?}"
            );
        }
    }
}

/// One `grpc.health.v1.Health/Check` on a new connection to `socket`, sent with exactly
/// this `:authority` (none when `None`).
async fn health_check(socket: &Path, authority: Option<&str>) -> anyhow::Result<ServingStatus> {
    let stream = UnixStream::connect(socket).await.context("connect")?;
    let io = RewriteHeaders::new(stream, request_headers(authority));
    let (mut client, connection) = h2::client::handshake(io).await.context("handshake")?;
    tokio::spawn(connection);

    // The URI and headers h2 encodes here are replaced on the wire by `request_headers`.
    let request = http::Request::post(format!("http://localhost{HEALTH_CHECK}")).body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    // An empty HealthCheckRequest: uncompressed, zero bytes long.
    let sent = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true);
    // A stream reset before the body went out shows here with the server's reason.
    let response = response.await.context("the server refused the call")?;
    sent?;
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    let (head, mut body) = response.into_parts();
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        message.extend_from_slice(&chunk);
    }
    // A failed call may answer with its status in the headers alone.
    let trailers = body.trailers().await?.unwrap_or(head.headers);
    let grpc_status = trailers.get("grpc-status").map(|v| v.as_bytes());
    if grpc_status != Some(b"0") {
        bail!(
            "grpc-status {grpc_status:?}, message {:?}",
            trailers.get("grpc-message")
        );
    }
    if message.len() < 5 || message[0] != 0 {
        bail!("not one uncompressed gRPC message: {message:?}");
    }
    let reply = HealthCheckResponse::decode(&message[5..])?;
    Ok(ServingStatus::try_from(reply.status)?)
}

/// The HPACK block of a gRPC request for [`HEALTH_CHECK`], every field a literal without
/// indexing (RFC 7541 6.2.2), pseudo-headers first.
fn request_headers(authority: Option<&str>) -> Bytes {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", HEALTH_CHECK),
    ];
    if let Some(authority) = authority {
        fields.push((":authority", authority));
    }
    fields.extend([("content-type", "application/grpc"), ("te", "trailers")]);
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value.as_bytes());
    }
    block.into()
}

/// An HPACK string literal without Huffman coding (RFC 7541 5.2).
fn hpack_string(block: &mut Vec<u8>, bytes: &[u8]) {
    // The length, an integer with a 7-bit prefix (RFC 7541 5.1).
    let mut len = bytes.len();
    if len < 0x7f {
        block.push(len as u8);
    } else {
        block.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            block.push((len % 0x80) as u8 | 0x80);
            len /= 0x80;
        }
        block.push(len as u8);
    }
    block.extend_from_slice(bytes);
}

/// The HTTP/2 client connection preface's length.
const PREFACE_LEN: usize = 24;
/// HTTP/2 frame header: length (3 bytes), type, flags, stream id (4 bytes).
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A client's Unix stream that sends `block` as the header block of stream 1's HEADERS
/// frame in place of what h2 encoded; every other byte passes unchanged.
struct RewriteHeaders {
    inner: UnixStream,
    block: Bytes,
    /// Written by h2, not yet a whole frame.
    pending: BytesMut,
    /// Ready for the socket.
    out: BytesMut,
    preface_left: usize,
}

impl RewriteHeaders {
    fn new(inner: UnixStream, block: Bytes) -> Self {
        Self {
            inner,
            block,
            pending: BytesMut::new(),
            out: BytesMut::new(),
            preface_left: PREFACE_LEN,
        }
    }

    /// Moves every whole frame (and the preface) from `pending` to `out`.
    fn split_frames(&mut self) {
        let preface = self.preface_left.min(self.pending.len());
        self.out.extend_from_slice(&self.pending.split_to(preface));
        self.preface_left -= preface;
        while self.preface_left == 0 && self.pending.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]]);
            if self.pending.len() < FRAME_HEADER_LEN + len as usize {
                break;
            }
            let frame = self.pending.split_to(FRAME_HEADER_LEN + len as usize);
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            if kind != HEADERS || stream != 1 {
                self.out.extend_from_slice(&frame);
                continue;
            }
            assert!(
                flags & END_HEADERS != 0,
                "the request headers fit one frame"
            );
            let len = u32::try_from(self.block.len())
                .expect("a small block")
                .to_be_bytes();
            self.out.extend_from_slice(&len[1..]);
            // No padding and no priority in the new block.
            self.out
                .extend_from_slice(&[HEADERS, flags & (END_STREAM | END_HEADERS)]);
            self.out.extend_from_slice(&frame[5..FRAME_HEADER_LEN]);
            self.out.extend_from_slice(&self.block);
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RewriteHeaders {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RewriteHeaders {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.pending.extend_from_slice(buf);
        this.split_frames();
        // Send what can go now; h2 flushes the rest.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
