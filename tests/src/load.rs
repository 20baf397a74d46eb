//! Traffic that keeps flowing while a test restarts or upgrades the stack: HTTP over new
//! and kept-alive connections, DNS over UDP and TCP, queue pushes and reserves over gRPC.
//! Every outcome is counted; [`Report::failures`] lists what a user would have seen fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{AckRequest, PushRequest, ReserveRequest};
use tokio::task::JoinHandle;

use crate::dns;

/// The queue the load uses.
pub const QUEUE: &str = "load";
/// Pause between retries of a call the server refused without doing it.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Counters shared by the generators.
#[derive(Debug, Default)]
struct Counters {
    http_new_ok: AtomicU64,
    http_kept_ok: AtomicU64,
    /// A kept-alive connection closed by the server between two requests, the request
    /// then sent again on a new connection (RFC 9112 9.3.1; what browsers and curl do).
    http_kept_reconnects: AtomicU64,
    dns_udp_ok: AtomicU64,
    dns_tcp_ok: AtomicU64,
    queue_retries: AtomicU64,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests over new connections answered 200.
    pub http_new_ok: u64,
    /// Requests over kept-alive connections answered 200.
    pub http_kept_ok: u64,
    /// Kept-alive connections the server closed between requests.
    pub http_kept_reconnects: u64,
    /// DNS answers over UDP.
    pub dns_udp_ok: u64,
    /// DNS answers over TCP.
    pub dns_tcp_ok: u64,
    /// Pushes acknowledged.
    pub pushed: u64,
    /// Jobs reserved and acknowledged.
    pub delivered: u64,
    /// Queue calls refused with UNAVAILABLE (nothing done) and sent again.
    pub queue_retries: u64,
    /// Everything that failed, one line each.
    pub failures: Vec<String>,
}

/// What every generator shares.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    counters: Counters,
    failures: std::sync::Mutex<Vec<String>>,
    /// Payloads of the pushes answered OK.
    pushed: std::sync::Mutex<Vec<u64>>,
    /// Payloads of the jobs reserved and acknowledged.
    delivered: std::sync::Mutex<Vec<u64>>,
    queue_socket: std::path::PathBuf,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Running load generators.
pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts the generators: `host` through proxyd at `http`, `name` at dnsd `dns`,
    /// pushes and reserves on queued's socket.
    pub fn start(
        http: SocketAddr,
        host: &str,
        dns_addr: SocketAddr,
        name: &str,
        queue_socket: std::path::PathBuf,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue_socket,
            ..Shared::default()
        });
        let mut tasks = Vec::new();
        for _ in 0..2 {
            tasks.push(tokio::spawn(http_new(
                http,
                host.to_string(),
                shared.clone(),
            )));
            tasks.push(tokio::spawn(http_kept(
                http,
                host.to_string(),
                shared.clone(),
            )));
        }
        tasks.push(tokio::spawn(pusher(shared.clone())));
        for _ in 0..2 {
            tasks.push(tokio::spawn(reserver(shared.clone())));
        }
        let threads = [false, true]
            .into_iter()
            .map(|tcp| {
                let (shared, name) = (shared.clone(), name.to_string());
                std::thread::spawn(move || dns_loop(dns_addr, &name, tcp, &shared))
            })
            .collect();
        Self {
            shared,
            tasks,
            threads,
        }
    }

    /// Requests so far over new connections (to see that traffic flows).
    pub fn http_ok(&self) -> u64 {
        self.shared.counters.http_new_ok.load(Ordering::Relaxed)
    }

    /// Stops the generators, reserves what is left on the queue, and reports.
    pub async fn finish(mut self) -> Report {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Whatever was pushed and not yet reserved.
        reserve_rest(&self.shared).await;
        let shared = &self.shared;
        let mut failures = shared.failures.lock().unwrap().clone();
        let pushed = shared.pushed.lock().unwrap().clone();
        let delivered = shared.delivered.lock().unwrap().clone();
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for job in &delivered {
            *seen.entry(*job).or_default() += 1;
        }
        for job in &pushed {
            if !seen.contains_key(job) {
                failures.push(format!("job {job} was pushed (OK) but never delivered"));
            }
        }
        for (job, times) in &seen {
            if *times > 1 {
                failures.push(format!("job {job} was delivered {times} times"));
            }
        }
        let c = &shared.counters;
        Report {
            http_new_ok: c.http_new_ok.load(Ordering::Relaxed),
            http_kept_ok: c.http_kept_ok.load(Ordering::Relaxed),
            http_kept_reconnects: c.http_kept_reconnects.load(Ordering::Relaxed),
            dns_udp_ok: c.dns_udp_ok.load(Ordering::Relaxed),
            dns_tcp_ok: c.dns_tcp_ok.load(Ordering::Relaxed),
            pushed: pushed.len() as u64,
            delivered: delivered.len() as u64,
            queue_retries: c.queue_retries.load(Ordering::Relaxed),
            failures,
        }
    }
}

async fn http_new(addr: SocketAddr, host: String, shared: Arc<Shared>) {
    while shared.running() {
        match crate::http::get(addr, &host, "/").await {
            Ok(reply) if reply.status == 200 => {
                shared.counters.http_new_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => shared.fail(format!(
                "HTTP (new connection): status {}: {}",
                reply.status, reply.body
            )),
            Err(e) => shared.fail(format!("HTTP (new connection): {e}")),
        }
    }
}

/// Requests on one connection after another, each connection kept alive as long as the
/// server keeps it.
async fn http_kept(addr: SocketAddr, host: String, shared: Arc<Shared>) {
    let counters = &shared.counters;
    while shared.running() {
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                shared.fail(format!("HTTP (keep-alive): connect: {e}"));
                continue;
            }
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            shared.fail("HTTP (keep-alive): handshake failed".into());
            continue;
        };
        tokio::spawn(connection);
        let mut served_here = 0;
        while shared.running() {
            if sender.ready().await.is_err() {
                // Closed by the server between requests: open a new one.
                counters
                    .http_kept_reconnects
                    .fetch_add(1, Ordering::Relaxed);
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
                            counters.http_kept_ok.fetch_add(1, Ordering::Relaxed);
                            served_here += 1;
                        }
                        Ok(_) => shared.fail(format!("HTTP (keep-alive): status {status}")),
                        Err(e) => shared.fail(format!("HTTP (keep-alive): body: {e}")),
                    }
                }
                // Closed (or reset) as the request went out, before any response
                // byte, on a connection that had served before: the server closed it
                // as idle. The idempotent GET is sent again on a new connection, as
                // HTTP clients do (RFC 9112 9.3.1).
                Ok(Err(e)) if served_here > 0 && closed_before_response(&e) => {
                    counters
                        .http_kept_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(e)) => {
                    shared.fail(format!("HTTP (keep-alive): {e}"));
                    break;
                }
                Err(_) => {
                    shared.fail("HTTP (keep-alive): timed out".into());
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

fn dns_loop(server: SocketAddr, name: &str, tcp: bool, shared: &Shared) {
    let (transport, counter) = if tcp {
        ("TCP", &shared.counters.dns_tcp_ok)
    } else {
        ("UDP", &shared.counters.dns_udp_ok)
    };
    while shared.running() {
        let answer = if tcp {
            dns_tcp(server, name)
        } else {
            dns_udp(server, name)
        };
        match answer {
            Ok(message)
                if message.metadata.response_code == ResponseCode::NoError
                    && !message.answers.is_empty() =>
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(message) => shared.fail(format!(
                "DNS over {transport}: {:?} with {} answers",
                message.metadata.response_code,
                message.answers.len()
            )),
            Err(e) => shared.fail(format!("DNS over {transport}: {e}")),
        }
    }
}

fn dns_udp(server: SocketAddr, name: &str) -> Result<Message, String> {
    let packet = dns::query(name, RecordType::A)
        .to_vec()
        .map_err(|e| e.to_string())?;
    let reply = dns::udp_raw(server, &packet, dns::ANSWER_TIMEOUT).ok_or("no answer (lost)")?;
    Message::from_vec(&reply).map_err(|e| e.to_string())
}

fn dns_tcp(server: SocketAddr, name: &str) -> Result<Message, String> {
    use std::io::{Read, Write};
    let packet = dns::query(name, RecordType::A)
        .to_vec()
        .map_err(|e| e.to_string())?;
    let mut stream = std::net::TcpStream::connect(server).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(dns::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream
        .write_all(&framed)
        .map_err(|e| format!("send: {e}"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .map_err(|e| format!("read: {e}"))?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    Message::from_vec(&reply).map_err(|e| e.to_string())
}

/// A queue client whose channel reconnects by itself after the server closes it.
fn queue_client(shared: &Shared) -> Result<QueueClient<tonic::transport::Channel>, String> {
    let socket = shared.queue_socket.display();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{socket}"))
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(30));
    Ok(QueueClient::new(endpoint.connect_lazy()))
}

/// Whether a call may be sent again, as gRPC clients do transparently: the server said
/// UNAVAILABLE (it is handing over; nothing was done), the stream was refused by the
/// server's HTTP/2 GOAWAY (never processed), the connection closed before the call was
/// sent on it (hyper's "canceled"), or the connection broke under the call (an old
/// instance exiting after its drain: every call it answers is complete, so a broken one
/// was not carried out). Were a retried call ever carried out twice, the duplicate check
/// in [`Load::finish`] would report it.
fn retryable(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let broken = error.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        });
        if broken
            || error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
            || format!("{error:?}").contains("GoAway(")
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// Sends `call` until it is carried out (or fails for good, reported as `what`); calls
/// the server refused without doing anything are sent again.
async fn until_done<T, F, Fut>(shared: &Shared, what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(answer) => return Some(answer),
            Err(status) if retryable(&status) => {
                shared
                    .counters
                    .queue_retries
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(status) => {
                shared.fail(format!("{what}: {status}"));
                return None;
            }
        }
    }
}

async fn pusher(shared: Arc<Shared>) {
    let Ok(client) = queue_client(&shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    let mut next = 0u64;
    while shared.running() {
        next += 1;
        let request = PushRequest {
            queue: QUEUE.into(),
            payload: next.to_be_bytes().to_vec(),
            delay_seconds: 0,
            max_tries: 0,
        };
        let pushed = until_done(&shared, "queue push", || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.push(request).await }
        })
        .await;
        if pushed.is_some() {
            shared.pushed.lock().unwrap().push(next);
        }
    }
}

async fn reserver(shared: Arc<Shared>) {
    let Ok(client) = queue_client(&shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    while shared.running() {
        reserve_one(&client, 1, &shared).await;
    }
}

/// Reserves and acknowledges one job, waiting up to `wait_seconds`; false when the queue
/// stayed empty.
async fn reserve_one(
    client: &QueueClient<tonic::transport::Channel>,
    wait_seconds: u64,
    shared: &Shared,
) -> bool {
    let request = ReserveRequest {
        queue: QUEUE.into(),
        timeout_seconds: 60,
        wait_seconds,
    };
    let reserved = until_done(shared, "queue reserve", || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            match client.reserve(request).await {
                Ok(job) => Ok(Some(job.into_inner())),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                Err(status) => Err(status),
            }
        }
    })
    .await;
    let job = match reserved {
        Some(Some(job)) => job,
        Some(None) => return false,
        None => return true,
    };
    let payload = u64::from_be_bytes(job.payload.as_slice().try_into().unwrap_or_default());
    let what = format!("queue ack of job {}", job.id);
    let acked = until_done(shared, &what, || {
        let mut client = client.clone();
        let request = AckRequest {
            id: job.id,
            attempt: job.attempt,
        };
        async move { client.ack(request).await }
    })
    .await;
    if acked.is_some() {
        shared.delivered.lock().unwrap().push(payload);
    }
    true
}

/// Reserves whatever is left on the queue.
async fn reserve_rest(shared: &Shared) {
    let Ok(client) = queue_client(shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    while reserve_one(&client, 0, shared).await {}
}
