//! Traffic that keeps flowing while a test restarts or upgrades the stack: HTTP (and,
//! once asked, HTTPS) over new and kept-alive connections, DNS over UDP and TCP, queue
//! pushes and reserves over gRPC. Every outcome is counted; [`Report::failures`] lists
//! what a user would have seen fail.

mod dns;
mod queue;
mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::task::JoinHandle;

pub use queue::QUEUE;
pub use web::{Io, Web};
use web::{Protocol, WebCounters};

/// Counters shared by the generators.
#[derive(Debug, Default)]
struct Counters {
    http: WebCounters,
    https: WebCounters,
    h2: WebCounters,
    dns_udp_ok: AtomicU64,
    dns_tcp_ok: AtomicU64,
    queue_retries: AtomicU64,
}

impl Counters {
    /// The counters of `protocol`.
    fn web(&self, protocol: Protocol) -> &WebCounters {
        match protocol {
            Protocol::Http => &self.http,
            Protocol::Https => &self.https,
            Protocol::H2 => &self.h2,
        }
    }
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
    /// HTTPS (HTTP/1.1) requests over new connections (a TLS handshake each) answered 200.
    pub https_new_ok: u64,
    /// HTTPS (HTTP/1.1) requests over kept-alive connections answered 200.
    pub https_kept_ok: u64,
    /// Kept-alive HTTPS (HTTP/1.1) connections the server closed between requests.
    pub https_kept_reconnects: u64,
    /// HTTP/2 requests over new connections answered 200.
    pub h2_new_ok: u64,
    /// HTTP/2 requests over kept-alive connections answered 200.
    pub h2_kept_ok: u64,
    /// Kept-alive HTTP/2 connections the server closed or sent away between requests.
    pub h2_kept_reconnects: u64,
    /// h2 requests on new connections that the server's GOAWAY refused (sent again).
    pub h2_new_refused: u64,
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
        let mut load = Self {
            shared: shared.clone(),
            tasks: Vec::new(),
            threads: Vec::new(),
        };
        load.add_web(Web::Http(http), host);
        load.tasks.push(tokio::spawn(queue::pusher(shared.clone())));
        for _ in 0..2 {
            load.tasks
                .push(tokio::spawn(queue::reserver(shared.clone())));
        }
        load.threads = [false, true]
            .into_iter()
            .map(|tcp| {
                let (shared, name) = (shared.clone(), name.to_string());
                std::thread::spawn(move || dns::queries(dns_addr, &name, tcp, &shared))
            })
            .collect();
        load
    }

    /// Adds web load on `web` for `host`: two generators opening a new connection per
    /// request, two keeping their connections alive.
    pub fn add_web(&mut self, web: Web, host: &str) {
        for _ in 0..2 {
            let shared = self.shared.clone();
            let new = web::new_connections(web.clone(), host.to_string(), shared);
            self.tasks.push(tokio::spawn(new));
            let shared = self.shared.clone();
            let kept = web::kept_alive(web.clone(), host.to_string(), shared);
            self.tasks.push(tokio::spawn(kept));
        }
    }

    /// HTTP requests so far over new connections (to see that traffic flows).
    pub fn http_ok(&self) -> u64 {
        self.shared.counters.http.new_ok.load(Ordering::Relaxed)
    }

    /// HTTPS requests so far over new connections, either protocol.
    pub fn https_ok(&self) -> u64 {
        let c = &self.shared.counters;
        c.https.new_ok.load(Ordering::Relaxed) + c.h2.new_ok.load(Ordering::Relaxed)
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
        queue::reserve_rest(&self.shared).await;
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
            http_new_ok: c.http.new_ok.load(Ordering::Relaxed),
            http_kept_ok: c.http.kept_ok.load(Ordering::Relaxed),
            http_kept_reconnects: c.http.kept_reconnects.load(Ordering::Relaxed),
            https_new_ok: c.https.new_ok.load(Ordering::Relaxed),
            https_kept_ok: c.https.kept_ok.load(Ordering::Relaxed),
            https_kept_reconnects: c.https.kept_reconnects.load(Ordering::Relaxed),
            h2_new_ok: c.h2.new_ok.load(Ordering::Relaxed),
            h2_kept_ok: c.h2.kept_ok.load(Ordering::Relaxed),
            h2_kept_reconnects: c.h2.kept_reconnects.load(Ordering::Relaxed),
            h2_new_refused: c.h2.new_refused.load(Ordering::Relaxed),
            dns_udp_ok: c.dns_udp_ok.load(Ordering::Relaxed),
            dns_tcp_ok: c.dns_tcp_ok.load(Ordering::Relaxed),
            pushed: pushed.len() as u64,
            delivered: delivered.len() as u64,
            queue_retries: c.queue_retries.load(Ordering::Relaxed),
            failures,
        }
    }
}
