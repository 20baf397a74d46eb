//! dnsd as the supervisor runs it: sockets and the notification channel inherited at
//! exec time, readiness reported, a hand-over to a second instance on the same sockets,
//! and a drain when the supervisor goes away.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;
use securely_proto::dns::SetRecordRequest;
use securely_proto::dns::dns_admin_client::DnsAdminClient;

/// The sockets a supervisor would hold across restarts of dnsd.
struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
    grpc: UnixListener,
    grpc_path: std::path::PathBuf,
    addr: SocketAddr,
}

impl Sockets {
    fn bind(dir: &std::path::Path) -> Self {
        let port = free_port();
        let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let grpc_path = dir.join("inherited-dnsd.sock");
        let grpc = UnixListener::bind(&grpc_path).unwrap();
        Self {
            addr: udp.local_addr().unwrap(),
            udp,
            tcp,
            grpc,
            grpc_path,
        }
    }
}

/// Duplicates `fd` above the range the child's fds land in, close-on-exec.
fn dup_high(fd: RawFd) -> OwnedFd {
    // SAFETY: fd is open; F_DUPFD_CLOEXEC returns a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(new >= 100, "dup failed");
    // SAFETY: just created.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// Starts dnsd the way the supervisor does: fds 3.. announced by LISTEN_FDS/NAMES, the
/// settings in SECURELY_SETTINGS, the notification socket in SECURELY_NOTIFY_FD.
fn spawn(dir: &std::path::Path, sockets: &Sockets, notify: &UnixStream) -> KilledOnDrop {
    spawn_announcing(dir, sockets, notify, "dns-udp:dns-tcp:grpc", "6")
}

/// [`spawn`] with fds 3, 4 and 5 (UDP, TCP, gRPC) announced as `names` and
/// SECURELY_NOTIFY_FD set to `notify_fd` (the notification socket is fd 6).
fn spawn_announcing(
    dir: &std::path::Path,
    sockets: &Sockets,
    notify: &UnixStream,
    names: &str,
    notify_fd: &str,
) -> KilledOnDrop {
    let fds: Vec<OwnedFd> = [
        sockets.udp.as_raw_fd(),
        sockets.tcp.as_raw_fd(),
        sockets.grpc.as_raw_fd(),
        notify.as_raw_fd(),
    ]
    .into_iter()
    .map(dup_high)
    .collect();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    // dns.listen names a port nobody binds: dnsd must use the inherited sockets instead.
    let settings = format!(
        "runtime_dir: {dir}/run\ndata_dir: {dir}/data\ngrace_period_seconds: 5\nproxy:\n  listen: [\"127.0.0.1:{}\"]\ndns:\n  listen: [\"127.0.0.1:{}\"]\n",
        free_port(),
        free_port(),
        dir = dir.display(),
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("inherited.log"))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_securely-dnsd"));
    command
        .env("SECURELY_SETTINGS", settings)
        .env("LISTEN_FDS", "3")
        .env("LISTEN_FDNAMES", names)
        .env("SECURELY_NOTIFY_FD", notify_fd)
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawning securely-dnsd");
    drop(fds);
    KilledOnDrop(child)
}

/// A dnsd process, killed if a test ends before it exits.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads notification lines until `want` arrives.
fn expect_line(reader: &mut BufReader<UnixStream>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("reading notifications");
        assert!(
            n > 0,
            "notification channel closed before {want:?}; saw {seen:?}"
        );
        let line = line.trim_end().to_string();
        let done = line == want;
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// Plays the supervisor's part of start-up: waits for `PREPARED=1`, grants the tree
/// (`ACQUIRE`), and waits for `READY=1`; returns the lines seen.
fn acquire(reader: &mut BufReader<UnixStream>) -> Vec<String> {
    use std::io::Write;
    expect_line(reader, "PREPARED=1");
    writeln!(reader.get_mut(), "ACQUIRE").expect("sending ACQUIRE");
    expect_line(reader, "READY=1")
}

fn wait_exit(child: &mut KilledOnDrop) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(started.elapsed() < EXIT_DEADLINE, "dnsd did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn set_record(path: &std::path::Path, name: &str, value: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = securely_core::rpc::connect(path).await.expect("connect");
        DnsAdminClient::new(channel)
            .set_record(SetRecordRequest {
                name: name.into(),
                r#type: "A".into(),
                value: value.into(),
                ttl: 0,
            })
            .await
            .expect("SetRecord");
    });
}

#[test]
fn inherited_sockets_serve_and_survive_a_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let sockets = Sockets::bind(dir.path());

    let (notify, theirs) = UnixStream::pair().unwrap();
    let mut first = spawn(dir.path(), &sockets, &theirs);
    drop(theirs);
    let mut notices = BufReader::new(notify);
    let seen = acquire(&mut notices);
    assert!(
        seen.iter().any(|l| l.starts_with("STATUS=serving test.")),
        "{seen:?}"
    );
    for (transport, reply) in both(sockets.addr, &query("app.test.", RecordType::A)) {
        assert_eq!(answers(&reply), vec!["127.0.0.1"], "{transport}");
    }
    set_record(&sockets.grpc_path, "moved.test", "10.3.3.3");

    // Hand-over: the old instance drains and exits; the sockets stay with us.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    expect_line(&mut notices, "STOPPING=1");
    let (status, _) = wait_exit(&mut first);
    assert!(status.success(), "{status}");

    let (notify, theirs) = UnixStream::pair().unwrap();
    let mut second = spawn(dir.path(), &sockets, &theirs);
    drop(theirs);
    let mut notices = BufReader::new(notify);
    acquire(&mut notices);
    for (transport, reply) in both(sockets.addr, &query("moved.test.", RecordType::A)) {
        assert_eq!(answers(&reply), vec!["10.3.3.3"], "{transport}");
    }

    // The supervisor going away (its end of the channel closing) drains dnsd too.
    drop(notices);
    let (status, took) = wait_exit(&mut second);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_fast_stop_reports_stopping_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let sockets = Sockets::bind(dir.path());
    let (notify, theirs) = UnixStream::pair().unwrap();
    let mut dnsd = spawn(dir.path(), &sockets, &theirs);
    drop(theirs);
    let mut notices = BufReader::new(notify);
    acquire(&mut notices);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dnsd.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    expect_line(&mut notices, "STOPPING=1");
    let (status, took) = wait_exit(&mut dnsd);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn inherited_fds_that_are_not_what_they_are_named_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let sockets = Sockets::bind(dir.path());
    let log = || std::fs::read_to_string(dir.path().join("inherited.log")).unwrap_or_default();
    for (names, notify_fd, says) in [
        (
            "dns-tcp:dns-udp:grpc",
            "6",
            "inherited fd 4 (named \"dns-udp\") is not a UDP socket: socket type Stream",
        ),
        (
            "dns-udp:dns-tcp:grpc",
            "5",
            "SECURELY_NOTIFY_FD=5: fd 5 is one of the inherited sockets",
        ),
        (
            "dns-udp:dns-tcp:grpc",
            "4",
            "SECURELY_NOTIFY_FD=4: fd 4 is one of the inherited sockets",
        ),
    ] {
        let (_notify, theirs) = UnixStream::pair().unwrap();
        let mut dnsd = spawn_announcing(dir.path(), &sockets, &theirs, names, notify_fd);
        let (status, _) = wait_exit(&mut dnsd);
        assert_eq!(status.code(), Some(1), "{names} {notify_fd}: {}", log());
        assert!(log().contains(says), "{names} {notify_fd}: {}", log());
    }
}
