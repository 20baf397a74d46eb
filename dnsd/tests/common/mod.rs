//! Shared by dnsd's process tests: start `securely-dnsd` standalone on free ports in a
//! temp dir, talk DNS to it over UDP and TCP with hickory-proto packets, call its admin
//! API over the Unix socket, and play an upstream resolver.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use securely_proto::dns::dns_admin_client::DnsAdminClient;
use securely_proto::dns::{
    ListRecordsRequest, Record as ApiRecord, SetRecordRequest, UnsetRecordRequest,
};
use tonic::transport::Channel;

/// How long a test waits for the daemon to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// How long a test waits for a DNS reply it expects.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits for the daemon to exit after SIGTERM.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// A `securely-dnsd` process, killed when dropped.
pub struct Dnsd {
    child: Option<Child>,
    /// The temp dir holding config, runtime dir and data dir.
    pub dir: Arc<tempfile::TempDir>,
    /// Where DNS is served (UDP and TCP).
    pub addr: SocketAddr,
    /// The gRPC socket.
    pub socket: PathBuf,
    log: PathBuf,
    runtime: tokio::runtime::Runtime,
    admin: Option<DnsAdminClient<Channel>>,
}

/// Extra lines for the `dns:` section of the config (indented by the caller's text).
#[derive(Default, Clone)]
pub struct DnsConfig {
    pub upstreams: Vec<String>,
    pub addresses: Option<Vec<String>>,
    /// The fault file the daemon's disk syncs obey (`securely_core::durable::fault`).
    pub sync_fault: Option<PathBuf>,
}

impl Dnsd {
    /// Starts a daemon in a fresh temp dir.
    pub fn start(config: DnsConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, config)
    }

    /// Starts a daemon in `dir` (reusing its data dir, for restarts), on fresh ports.
    pub fn start_in(dir: Arc<tempfile::TempDir>, config: DnsConfig) -> Self {
        let mut dnsd = Self::launch(dir, config);
        dnsd.wait_ready();
        dnsd
    }

    /// Starts a daemon in `dir` without waiting for it to be ready.
    pub fn launch(dir: Arc<tempfile::TempDir>, config: DnsConfig) -> Self {
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let runtime_dir = dir.path().join("run");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&runtime_dir).expect("runtime dir");
        let addresses = config
            .addresses
            .unwrap_or_else(|| vec!["127.0.0.1".into(), "::1".into()]);
        let yaml = format!(
            "runtime_dir: {}\ndata_dir: {}\ngrace_period_seconds: 5\nproxy:\n  listen: [\"127.0.0.1:{}\"]\ndns:\n  listen: [\"{addr}\"]\n  tld: test\n  ttl: 60\n  addresses: {}\n  upstreams: {}\n",
            runtime_dir.display(),
            data_dir.display(),
            free_port(),
            yaml_list(&addresses),
            yaml_list(&config.upstreams),
        );
        let config_path = dir.path().join("securely.yaml");
        std::fs::write(&config_path, yaml).expect("writing config");
        let log = dir.path().join(format!("dnsd-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_securely-dnsd"))
            .arg("-c")
            .arg(&config_path)
            .env("SECURELY_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("SECURELY_NOTIFY_FD")
            .env_remove("SECURELY_SETTINGS")
            .envs(
                config
                    .sync_fault
                    .iter()
                    .map(|path| (securely_core::durable::fault::SYNC_FAULT_ENV, path)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawning securely-dnsd");
        Self {
            child: Some(child),
            dir,
            addr,
            socket: runtime_dir.join("dnsd.sock"),
            log,
            // A worker thread keeps the client's connections alive between calls, as
            // in a real client (HTTP/2 graceful close needs its PING answered).
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            admin: None,
        }
    }

    /// Waits (at most [`READY_DEADLINE`]) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + READY_DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("securely-dnsd exited early with {status}:\n{}", self.log());
            }
            if self.socket.exists() {
                let socket = self.socket.clone();
                let connected = self.runtime.block_on(async move {
                    let channel = securely_core::rpc::connect(&socket).await.ok()?;
                    let mut client = DnsAdminClient::new(channel);
                    client.list_records(ListRecordsRequest {}).await.ok()?;
                    Some(client)
                });
                if let Some(client) = connected {
                    self.admin = Some(client);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "securely-dnsd not ready within {READY_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> DnsAdminClient<Channel> {
        self.admin.clone().expect("connected at start")
    }

    /// `SetRecord`.
    pub fn set_record(
        &self,
        name: &str,
        rtype: &str,
        value: &str,
        ttl: u32,
    ) -> Result<ApiRecord, tonic::Status> {
        let mut client = self.client();
        let request = SetRecordRequest {
            name: name.into(),
            r#type: rtype.into(),
            value: value.into(),
            ttl,
        };
        self.runtime
            .block_on(client.set_record(request))
            .map(tonic::Response::into_inner)
    }

    /// `UnsetRecord`; the number removed.
    pub fn unset_record(&self, name: &str, rtype: &str) -> Result<u32, tonic::Status> {
        let mut client = self.client();
        let request = UnsetRecordRequest {
            name: name.into(),
            r#type: rtype.into(),
        };
        self.runtime
            .block_on(client.unset_record(request))
            .map(|r| r.into_inner().removed)
    }

    /// `ListRecords`.
    pub fn list_records(&self) -> Vec<ApiRecord> {
        let mut client = self.client();
        self.runtime
            .block_on(client.list_records(ListRecordsRequest {}))
            .expect("ListRecords")
            .into_inner()
            .records
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        self.wait_exit()
    }

    /// Waits (at most [`EXIT_DEADLINE`]) for the process to exit; its status and how
    /// long that took.
    pub fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > EXIT_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "securely-dnsd did not exit within {EXIT_DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Dnsd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("UDP bind");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A query for `name` (kept exactly as written, case included) and `rtype`, RD set.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    message
}

/// `message` with an OPT record advertising `payload` bytes.
pub fn with_edns(mut message: Message, payload: u16, version: u8) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload).set_version(version);
    message.set_edns(edns);
    message
}

/// Sends raw bytes over UDP; the reply's bytes, or `None` after `timeout`.
pub fn udp_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("UDP bind");
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    socket.send_to(bytes, addr).expect("send");
    let mut buf = vec![0u8; 65_535];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Asks over UDP and parses the reply (which must come).
pub fn udp(addr: SocketAddr, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode");
    let reply = udp_raw(addr, &bytes, REPLY_TIMEOUT).expect("a UDP reply");
    check_reply(message, &reply)
}

/// Sends one length-prefixed message over a fresh TCP connection; the reply's bytes, or
/// `None` when the server closed or `timeout` passed.
pub fn tcp_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).expect("TCP connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).expect("TCP write");
    read_tcp_message(&mut stream)
}

/// Reads one length-prefixed DNS message.
pub fn read_tcp_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).ok()?;
    Some(reply)
}

/// Asks over TCP and parses the reply (which must come).
pub fn tcp(addr: SocketAddr, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode");
    let reply = tcp_raw(addr, &bytes, REPLY_TIMEOUT).expect("a TCP reply");
    check_reply(message, &reply)
}

/// Parses a reply and checks it answers `query`: same id, QR set, question echoed.
fn check_reply(query: &Message, reply: &[u8]) -> Message {
    let message = Message::from_vec(reply).expect("a parseable reply");
    assert_eq!(message.metadata.id, query.metadata.id);
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(message.queries, query.queries, "question echoed");
    message
}

/// Asks over both transports and returns both replies.
pub fn both(addr: SocketAddr, message: &Message) -> [(&'static str, Message); 2] {
    [("udp", udp(addr, message)), ("tcp", tcp(addr, message))]
}

/// The answer records' data as text.
pub fn answers(reply: &Message) -> Vec<String> {
    reply.answers.iter().map(|r| r.data.to_string()).collect()
}

/// The response code.
pub fn rcode(reply: &Message) -> ResponseCode {
    reply.metadata.response_code
}

/// An upstream resolver on 127.0.0.1 (UDP) that knows `example.com` (A 192.0.2.10),
/// answers NXDOMAIN with a SOA for `missing.example.`, and NODATA otherwise.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("upstream bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = upstream_answer(&request);
                let _ = socket.send_to(&reply.to_vec().expect("encode"), from);
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn upstream_answer(request: &Message) -> Message {
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(query.clone());
    let name = query.name().to_ascii().to_ascii_lowercase();
    let soa = Record::from_rdata(
        Name::from_ascii("example.").expect("name"),
        300,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.example.").expect("name"),
            Name::from_ascii("admin.example.").expect("name"),
            7,
            3600,
            600,
            86400,
            300,
        )),
    );
    match (name.as_str(), query.query_type()) {
        ("example.com.", RecordType::A) => {
            reply.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::A(A::new(192, 0, 2, 10)),
            ));
        }
        ("missing.example.", _) => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_authority(soa);
        }
        _ => {
            reply.add_authority(soa);
        }
    }
    reply
}

/// A UDP socket that swallows everything: an upstream that never answers.
pub fn dead_upstream() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind")
}

/// Asserts `status` is INVALID_ARGUMENT mentioning `needle`.
pub fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, needle: &str) {
    let status = result.expect_err("an invalid argument");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} does not mention {needle:?}",
        status.message()
    );
}

/// The path of a file inside the daemon's dir.
pub fn path_in(dnsd: &Dnsd, name: &str) -> PathBuf {
    Path::new(dnsd.dir.path()).join(name)
}
