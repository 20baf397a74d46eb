//! pingora's `-u` path only between root and the stack's user: a process of another user
//! that binds `upgrade_sock` is handed nothing, and one that connects to a waiting `-u`
//! supervisor is turned away while the real hand-over still happens.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use securely_tests::{Stack, alive, wait_for};

/// The user the stranger runs as.
const NOBODY: u32 = 65534;

/// Binds `argv[1]` and reports what the first connection brings.
const STRANGER_LISTENS: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
print("listening", flush=True)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(10)
msg, fds, _, _ = socket.recv_fds(c, 1 << 20, 300)
print(f"received {len(fds)} fds and {len(msg)} bytes", flush=True)
"#;

/// Connects to `argv[1]`, offers its stdin as a socket, and reports how that ended.
const STRANGER_CONNECTS: &str = r#"
import socket, sys
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sys.argv[1])
c.settimeout(10)
try:
    socket.send_fds(c, [b'{"sockets":[{"owner":"control","name":"control","url":"","fd":0}]}'], [0])
    answer = c.recv(2)
except OSError as e:
    answer = repr(e).encode()
print(f"answered {answer!r}", flush=True)
"#;

fn as_nobody(script: &str, path: &std::path::Path) -> Command {
    let mut command = Command::new("python3");
    command
        .args(["-c", script])
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn pids(stack: &Stack) -> Vec<u32> {
    ["proxyd", "dnsd", "queued"]
        .iter()
        .map(|d| stack.ready_pid(d).expect("ready"))
        .collect()
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root to act as another user");
    false
}

#[test]
fn a_stranger_on_upgrade_sock_is_handed_nothing_and_nothing_changes() {
    if !is_root() {
        return;
    }
    let stack = Stack::start();
    let supervisor = stack.supervisor_pid();
    let daemons = pids(&stack);
    let upgrade_sock = stack.upgrade_socket();
    // Let the stranger create files in the runtime dir, so the check is what decides.
    std::fs::set_permissions(stack.run_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut stranger = as_nobody(STRANGER_LISTENS, &upgrade_sock).spawn().unwrap();
    let mut said = BufReader::new(stranger.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "listening");

    stack.signal_supervisor(Signal::SIGQUIT);
    let upgrade = wait_for("the upgrade to fail", Duration::from_secs(20), || {
        let upgrade = stack.status()?["upgrade"].clone();
        (upgrade["state"] == "failed").then_some(upgrade)
    });
    let detail = upgrade["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused the supervisor waiting on")
            && detail.contains(&format!("uid {NOBODY}")),
        "{upgrade}"
    );
    assert_eq!(
        said.next().unwrap().unwrap(),
        "received 0 fds and 0 bytes",
        "the stranger was sent something"
    );
    assert!(stranger.wait().unwrap().success());
    // Nothing changed: same supervisor, same daemons, serving.
    assert_eq!(stack.supervisor_pid(), supervisor);
    assert_eq!(pids(&stack), daemons);
    assert!(
        stack
            .log()
            .contains("upgrade failed, serving on: upgrade_sock: refused"),
        "{}",
        stack.log()
    );
    std::fs::remove_file(&upgrade_sock).unwrap();
}

#[test]
fn a_waiting_supervisor_turns_a_stranger_away_and_takes_the_real_hand_over() {
    if !is_root() {
        return;
    }
    let stack = Stack::start();
    let old_supervisor = stack.supervisor_pid();
    let waiting = stack.start_waiting_supervisor();
    let upgrade_sock = stack.upgrade_socket();
    // Let the stranger reach the socket, so the check is what decides.
    std::fs::set_permissions(stack.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&upgrade_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = as_nobody(STRANGER_CONNECTS, &upgrade_sock)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&stranger.stdout);
    // Closed on it (at once, or with a reset or a broken pipe, as what it sent was never
    // read), never acknowledged.
    assert!(
        answer.starts_with("answered ") && !answer.contains("OK"),
        "the stranger got an answer: {answer} {}",
        String::from_utf8_lossy(&stranger.stderr)
    );

    // The running supervisor's hand-over still goes through.
    stack.signal_supervisor(Signal::SIGQUIT);
    let out = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("upgrade_sock: refused a connection: uid {NOBODY}")),
        "{err}"
    );
    assert_ne!(stack.supervisor_pid(), old_supervisor);
    wait_for(
        "the old supervisor to exit",
        Duration::from_secs(15),
        || (!alive(old_supervisor)).then_some(()),
    );
    stack.wait_all_ready();
}
