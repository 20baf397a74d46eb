//! Keep-alive HTTP load as wrk makes it: a fixed number of connections, each sending its
//! next request the moment the previous response is in, and never sending one again.
//!
//! Such a client is never idle, so a server may close one of its connections only right
//! after a response that said `Connection: close`. Anything else counts as a failure: a
//! connection closed or reset with a request unanswered (wrk's "read" error), a status
//! other than 200, no answer within [`REQUEST_TIMEOUT`] (wrk's "timeout"), a failed
//! connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long one request may take, connect included.
pub const REQUEST_TIMEOUT: Duration = crate::http::REQUEST_TIMEOUT;
/// The longest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests answered 200.
    pub ok: u64,
    /// Connections the server closed right after a `Connection: close` response.
    pub closed_after_answer: u64,
    /// The longest answer.
    pub slowest: Duration,
    /// Everything that failed, one line each.
    pub failures: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    closed_after_answer: AtomicU64,
    slowest_micros: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// The running load.
pub struct KeepAliveLoad {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KeepAliveLoad {
    /// Starts `connections` connections to `addr`, each asking for `/` with `Host: host`.
    pub fn start(addr: SocketAddr, host: &str, connections: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let request: Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
            .into_bytes()
            .into();
        let tasks = (0..connections)
            .map(|_| tokio::spawn(connection(addr, request.clone(), shared.clone())))
            .collect();
        Self { shared, tasks }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Stops after the requests in flight are answered, and reports.
    pub async fn finish(self) -> Report {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let shared = &self.shared;
        Report {
            ok: shared.ok.load(Ordering::Relaxed),
            closed_after_answer: shared.closed_after_answer.load(Ordering::Relaxed),
            slowest: Duration::from_micros(shared.slowest_micros.load(Ordering::Relaxed)),
            failures: shared
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// One connection after another, each used until the server says it closes it.
async fn connection(addr: SocketAddr, request: Arc<[u8]>, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                shared.fail(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                shared.fail("connect: timed out".into());
                continue;
            }
        };
        let mut served = 0u64;
        let mut started = Some(started);
        while !shared.stop.load(Ordering::Relaxed) {
            let since = started.take().unwrap_or_else(Instant::now);
            let exchange = async {
                stream.write_all(&request).await?;
                read_response(&mut stream).await
            };
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    shared.fail(format!(
                        "request {} on a connection: no answer: {e}",
                        served + 1
                    ));
                    break;
                }
                Err(_) => {
                    shared.fail(format!("request {} timed out", served + 1));
                    break;
                }
            };
            let took = since.elapsed().as_micros() as u64;
            shared.slowest_micros.fetch_max(took, Ordering::Relaxed);
            if answer.status == 200 {
                shared.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.fail(format!("status {}", answer.status));
            }
            served += 1;
            if answer.close {
                shared.closed_after_answer.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// A response's status and whether it closes its connection.
struct Answer {
    status: u16,
    close: bool,
}

/// Reads one response, which must have a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<Answer> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if received.len() > MAX_HEAD {
            return Err(invalid("response head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes of the response", received.len()),
            ));
        }
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status"))?;
    let mut length = None;
    let mut connection = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value.to_ascii_lowercase();
        }
    }
    let length = length.ok_or_else(|| invalid("no Content-Length"))?;
    let http10 = status_line.starts_with("HTTP/1.0");
    let close = connection.contains("close") || (http10 && !connection.contains("keep-alive"));
    let mut body = received.len() - (end + 4);
    while body < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the middle of the body",
            ));
        }
        body += n;
    }
    Ok(Answer { status, close })
}
