//! proxyd as the supervisor runs it: its HTTP socket inherited at exec time (fd 3, named
//! `http`) and readiness reported on an inherited notification socket (fd 4).

mod common;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Backend, Proxyd, START_DEADLINE, free_port, get};
use hyper::StatusCode;
use nix::libc;
use nix::sys::signal::Signal;
use securely_proto::daemon::DaemonStatusRequest;
use securely_proto::daemon::daemon_control_client::DaemonControlClient;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

/// Reads notification lines until one equals `wanted`; returns the lines before it.
async fn wait_for_line(
    lines: &mut Lines<BufReader<tokio::net::UnixStream>>,
    wanted: &str,
) -> Vec<String> {
    let mut before = Vec::new();
    let read = async {
        while let Some(line) = lines
            .next_line()
            .await
            .expect("notification socket readable")
        {
            if line == wanted {
                return;
            }
            before.push(line);
        }
        panic!("notification socket closed before {wanted}");
    };
    tokio::time::timeout(START_DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no {wanted} within {START_DEADLINE:?}"));
    before
}

#[tokio::test]
async fn an_inherited_blocking_listener_serves_and_readiness_follows_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    // Bound like the supervisor binds, but left blocking: proxyd must fix that.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let inherited = listener.local_addr().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (listener_fd, notify_fd) = (listener.as_raw_fd(), theirs.as_raw_fd());
    let configured_port = free_port();

    let mut proxyd = Proxyd::spawn_with(dir.path(), configured_port, 30, |command| {
        command
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env("SECURELY_NOTIFY_FD", "4");
        // SAFETY: only async-signal-safe calls between fork and exec. The copies at 10+
        // are close-on-exec, so only fds 3 and 4 reach proxyd.
        unsafe {
            command.pre_exec(move || {
                let listener = libc::fcntl(listener_fd, libc::F_DUPFD_CLOEXEC, 10);
                let notify = libc::fcntl(notify_fd, libc::F_DUPFD_CLOEXEC, 10);
                if listener < 0
                    || notify < 0
                    || libc::dup2(listener, 3) < 0
                    || libc::dup2(notify, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    drop(theirs);
    proxyd.http = inherited;
    let mut commands = ours.try_clone().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut lines = BufReader::new(tokio::net::UnixStream::from_std(ours).unwrap()).lines();
    // The hand-over: prepared first, then the tree is proxyd's to open.
    wait_for_line(&mut lines, "PREPARED=1").await;
    std::io::Write::write_all(&mut commands, b"ACQUIRE\n").unwrap();

    // READY=1 only once the proxy answers: the very next request must be served.
    let before_ready = wait_for_line(&mut lines, "READY=1").await;
    let status = before_ready
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .expect("a STATUS line");
    assert!(status.contains(&format!("HTTP on {inherited}")), "{status}");
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        get(inherited, Some("none.test"), "/"),
    )
    .await
    .expect("answered right after READY=1")
    .unwrap();
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", configured_port)).is_err(),
        "proxyd bound proxy.listen although it inherited a socket"
    );

    proxyd.wait_serving().await;
    proxyd.link("app", &backend.target(), &[]).await;
    let response = get(inherited, Some("app.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::OK);

    let channel = securely_core::rpc::connect(&proxyd.socket).await.unwrap();
    let reply = DaemonControlClient::new(channel)
        .status(DaemonStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.name, "proxyd");
    assert_eq!(reply.state, "ready");
    assert!(
        reply.listeners.contains(&format!("tcp://{inherited}")),
        "{:?}",
        reply.listeners
    );

    proxyd.signal(Signal::SIGTERM);
    wait_for_line(&mut lines, "STOPPING=1").await;
    let exit = proxyd.wait_exit(Duration::from_secs(3)).await;
    assert!(exit.success(), "{exit}");
    drop(listener);
}
