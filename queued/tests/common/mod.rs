//! The harness of queued's process tests: the real binary, run standalone with a temp
//! config, runtime dir and data dir, driven through its gRPC socket.

#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{
    AckRequest, FailRequest, Job, ListFailedRequest, PushRequest, QueueStats, ReserveRequest,
    StatsRequest,
};
use tonic::transport::Channel;

/// How long the daemon may take to serve.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(10);

/// A port free on 127.0.0.1 for TCP and UDP right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A temp dir holding a config, `run/` and `data/`; outlives daemon restarts.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Home {
    /// A fresh home with the queue settings in `queue_yaml` (indented under `queue:`).
    pub fn new(queue_yaml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("queued-test-")
            .tempdir()
            .expect("temp dir");
        let yaml = format!(
            "runtime_dir: {run}\ndata_dir: {data}\ngrace_period_seconds: 10\n\
             proxy:\n  listen: [\"127.0.0.1:{http}\"]\ndns:\n  listen: [\"127.0.0.1:{dns}\"]\n\
             queue:\n{queue_yaml}",
            run = dir.path().join("run").display(),
            data = dir.path().join("data").display(),
            http = free_port(),
            dns = free_port(),
        );
        let config = dir.path().join("securely.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self { dir, config }
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/queued.sock")
    }

    /// The daemon's log (all runs).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("queued.log")
    }

    /// The log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// The default queue settings of the tests: 1 s backoff, 60 s reservations.
pub const QUEUE_YAML: &str = "  default_timeout_seconds: 60\n  default_max_tries: 3\n  \
                              retry_backoff_seconds: 1\n  max_retry_backoff_seconds: 10\n";

/// A running `securely-queued`; killed on drop.
pub struct Queued {
    pub child: Child,
    pub socket: PathBuf,
}

impl Queued {
    /// Starts the daemon on `home` and waits until it answers.
    pub async fn start(home: &Home) -> Self {
        Self::start_with_env(home, &[]).await
    }

    /// [`Queued::start`] with extra environment variables.
    pub async fn start_with_env(home: &Home, env: &[(&str, &Path)]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.log_path())
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_securely-queued"))
            .arg("-c")
            .arg(&home.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("SECURELY_LOG", "info")
            .env_remove("SECURELY_SETTINGS")
            .env_remove("SECURELY_NOTIFY_FD")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .spawn()
            .expect("start securely-queued");
        let mut this = Self {
            child,
            socket: home.socket(),
        };
        this.wait_serving(home).await;
        this
    }

    async fn wait_serving(&mut self, home: &Home) {
        let give_up = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("securely-queued exited with {status}:\n{}", home.log());
            }
            if self.socket.exists()
                && let Ok(channel) = securely_core::rpc::connect(&self.socket).await
                && QueueClient::new(channel)
                    .stats(StatsRequest {})
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "securely-queued did not serve within {START_DEADLINE:?}:\n{}",
                home.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        let channel = securely_core::rpc::connect(&self.socket)
            .await
            .expect("connect to queued.sock");
        Client(QueueClient::new(channel))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal queued");
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `deadline` for the daemon to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= give_up {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the daemon still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A queue client with shorthands for the tests.
#[derive(Clone)]
pub struct Client(pub QueueClient<Channel>);

impl Client {
    /// Pushes and returns the id.
    pub async fn push(&mut self, queue: &str, payload: &[u8]) -> u64 {
        self.push_with(queue, payload, 0, 0).await.expect("push").id
    }

    /// Pushes with a delay and tries.
    pub async fn push_with(
        &mut self,
        queue: &str,
        payload: &[u8],
        delay_seconds: u64,
        max_tries: u32,
    ) -> Result<securely_proto::queue::PushReply, tonic::Status> {
        self.0
            .push(PushRequest {
                queue: queue.into(),
                payload: payload.to_vec(),
                delay_seconds,
                max_tries,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Reserves.
    pub async fn reserve(
        &mut self,
        queue: &str,
        timeout_seconds: u64,
        wait_seconds: u64,
    ) -> Result<Job, tonic::Status> {
        self.0
            .reserve(ReserveRequest {
                queue: queue.into(),
                timeout_seconds,
                wait_seconds,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Acknowledges.
    pub async fn ack(&mut self, id: u64) -> Result<(), tonic::Status> {
        self.0.ack(AckRequest { id, attempt: 0 }).await.map(|_| ())
    }

    /// Fails an attempt.
    pub async fn fail(
        &mut self,
        id: u64,
        error: &str,
    ) -> Result<securely_proto::queue::FailReply, tonic::Status> {
        self.0
            .fail(FailRequest {
                id,
                error: error.into(),
                attempt: 0,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The failed list of `queue` ("" for all).
    pub async fn failed(&mut self, queue: &str) -> Vec<securely_proto::queue::FailedJob> {
        self.0
            .list_failed(ListFailedRequest {
                queue: queue.into(),
            })
            .await
            .expect("list failed")
            .into_inner()
            .jobs
    }

    /// One queue's stats.
    pub async fn stats(&mut self, queue: &str) -> QueueStats {
        self.0
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .queues
            .into_iter()
            .find(|q| q.queue == queue)
            .unwrap_or_else(|| panic!("no stats for queue {queue}"))
    }
}

/// The current time as Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Whether `path` exists (for socket checks).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
