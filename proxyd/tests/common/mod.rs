//! The harness shared by proxyd's process tests: the real binary run standalone, a real
//! HTTP backend, a real HTTP client and the gRPC client a user's tools would use.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use securely_proto::proxy::proxy_admin_client::ProxyAdminClient;
use securely_proto::proxy::{LinkSiteRequest, ListSitesRequest, Site, UnlinkSiteRequest};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

/// How long a daemon may take to start serving.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A securely-proxyd process run standalone, killed when dropped.
pub struct Proxyd {
    child: Option<Child>,
    dir: PathBuf,
    /// Where it serves HTTP.
    pub http: SocketAddr,
    /// Its gRPC socket.
    pub socket: PathBuf,
}

impl Proxyd {
    /// Starts proxyd with its state under `dir`, serving HTTP on `http_port`, with
    /// `grace_period_seconds` as given, and waits until it serves HTTP and gRPC.
    pub async fn start(dir: &Path, http_port: u16, grace_seconds: u64) -> Self {
        let mut proxyd = Self::spawn_with(dir, http_port, grace_seconds, |_| {});
        proxyd.wait_serving().await;
        proxyd
    }

    /// Starts proxyd like [`Proxyd::start`] with `configure` applied to the command (to
    /// hand it sockets, say), without waiting for it. `http_port` goes into the settings.
    pub fn spawn_with(
        dir: &Path,
        http_port: u16,
        grace_seconds: u64,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let runtime = dir.join("run");
        let data = dir.join("data");
        std::fs::create_dir_all(&runtime).unwrap();
        let config = dir.join("securely.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime_dir: {}\ndata_dir: {}\ngrace_period_seconds: {grace_seconds}\n\
                 graceful_shutdown_timeout_seconds: 5\nthreads: 2\n\
                 proxy:\n  listen: [\"127.0.0.1:{http_port}\"]\n  tls_listen: []\n\
                 dns:\n  listen: [\"127.0.0.1:{}\"]\n  tld: test\n",
                runtime.display(),
                data.display(),
                free_port(),
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("proxyd.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_securely-proxyd"));
        command
            .arg("-c")
            .arg(&config)
            .env("SECURELY_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("SECURELY_NOTIFY_FD")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        configure(&mut command);
        let child = command.spawn().expect("securely-proxyd starts");
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            socket: runtime.join("proxyd.sock"),
        }
    }

    /// Waits until it serves gRPC and HTTP (an unknown host gets its 404).
    pub async fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child_mut().try_wait().unwrap() {
                panic!("proxyd exited during start-up ({status}):\n{}", self.log());
            }
            let grpc_ok = match self.try_admin().await {
                Some(mut admin) => admin.list_sites(ListSitesRequest {}).await.is_ok(),
                None => false,
            };
            if grpc_ok && let Ok(response) = get(self.http, Some("readiness.invalid"), "/").await {
                assert_eq!(response.status, StatusCode::NOT_FOUND);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxyd did not serve within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn try_admin(&self) -> Option<ProxyAdminClient<Channel>> {
        securely_core::rpc::connect(&self.socket)
            .await
            .ok()
            .map(ProxyAdminClient::new)
    }

    /// A connected admin client.
    pub async fn admin(&self) -> ProxyAdminClient<Channel> {
        self.try_admin().await.expect("gRPC socket answers")
    }

    /// Links a site, panicking on refusal.
    pub async fn link(&self, name: &str, target: &str, hostnames: &[&str]) -> Site {
        self.admin()
            .await
            .link_site(link_request(name, target, hostnames))
            .await
            .unwrap_or_else(|e| panic!("LinkSite {name}: {e}"))
            .into_inner()
    }

    /// Unlinks a site.
    pub async fn unlink(&self, name: &str) -> Result<(), tonic::Status> {
        self.admin()
            .await
            .unlink_site(UnlinkSiteRequest { name: name.into() })
            .await
            .map(drop)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child_mut().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "proxyd did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child_mut().try_wait().unwrap().is_none()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxyd.log")).unwrap_or_default()
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("proxyd is running")
    }
}

impl Drop for Proxyd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- proxyd log ---\n{}", self.log());
        }
    }
}

/// A `LinkSiteRequest`.
pub fn link_request(name: &str, target: &str, hostnames: &[&str]) -> LinkSiteRequest {
    LinkSiteRequest {
        name: name.into(),
        target: target.into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
    }
}

/// An HTTP/1.1 backend on 127.0.0.1 that answers every request with 200 and the request's
/// headers in its body, one `name: value` line each (names lowercased). `/slow` answers
/// after [`Backend::SLOW`].
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received so far (counted when they arrive, before any delay).
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// How long `/slow` takes.
    pub const SLOW: Duration = Duration::from_secs(1);

    /// Starts a backend.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if request.uri().path() == "/slow" {
                                tokio::time::sleep(Backend::SLOW).await;
                            }
                            let mut body = String::new();
                            for (name, value) in request.headers() {
                                body.push_str(&format!(
                                    "{name}: {}\n",
                                    String::from_utf8_lossy(value.as_bytes())
                                ));
                            }
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// The target string for `LinkSite`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Fetched {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Fetched {
    /// The backend's echo of the request headers (the last value of each name).
    pub fn echoed(&self) -> BTreeMap<String, String> {
        self.body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// `GET path` to `addr` over a fresh HTTP/1.1 connection, with `host` as the Host header
/// (none when `None`) and `extra` headers.
pub async fn get_with(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Fetched, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder().uri(path);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Empty::new())?).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Fetched {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path` with `host` as the Host header.
pub async fn get(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
) -> Result<Fetched, Box<dyn std::error::Error + Send + Sync>> {
    get_with(addr, host, path, &[]).await
}
