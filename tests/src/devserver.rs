//! A slow development server, as many local apps are (`python3 -m http.server`, `php -S`):
//! HTTP/1.0, one connection per request (it closes after every response), a listen
//! backlog of [`BACKLOG`], and slow answers: [`QUICK`] for most requests, [`SLOW`] for
//! one in [`SLOW_EVERY`], longer than the second proxyd gives kept-alive connections
//! during a drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The listen backlog of Python's `socketserver` (`request_queue_size`).
pub const BACKLOG: u32 = 5;
/// How long most requests take.
pub const QUICK: Duration = Duration::from_millis(100);
/// How long the slow ones take.
pub const SLOW: Duration = Duration::from_millis(1500);
/// One request in this many is slow.
pub const SLOW_EVERY: u64 = 4;
/// The body of every answer.
pub const BODY: &str = "hello from a slow dev server\n";
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// The running server; it stops when dropped.
pub struct DevServer {
    /// Where it listens.
    pub addr: SocketAddr,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DevServer {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind the dev server");
        let listener = socket.listen(BACKLOG).expect("listen");
        let addr = listener.local_addr().expect("dev server address");
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        let task = tokio::spawn(async move {
            let mut requests = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                requests += 1;
                let delay = if requests % SLOW_EVERY == 0 {
                    SLOW
                } else {
                    QUICK
                };
                let count = count.clone();
                tokio::spawn(async move {
                    if answer(stream, delay).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Self {
            addr,
            answered,
            task,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head, waits `delay`, answers 200 as HTTP/1.0 and closes.
async fn answer(mut stream: TcpStream, delay: Duration) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || head.len() > MAX_HEAD {
                return Err(std::io::Error::other("no complete request head"));
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read_head)
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    tokio::time::sleep(delay).await;
    let response = format!(
        "HTTP/1.0 200 OK\r\nServer: devserver\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
