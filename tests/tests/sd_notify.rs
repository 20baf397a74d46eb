//! The supervisor speaks sd_notify to systemd when NOTIFY_SOCKET is set: checked from
//! systemd's side, a datagram socket receiving what the supervisor sends.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;
use securely_tests::{Stack, StackConfig};

/// Reads datagrams until one contains `wanted`; returns them all, one per line.
fn until(socket: &UnixDatagram, wanted: &str) -> String {
    let mut buf = vec![0u8; 4096];
    let mut seen = String::new();
    loop {
        let len = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted} from the supervisor (saw {seen:?}): {e}"));
        let message = String::from_utf8_lossy(&buf[..len]).into_owned();
        seen.push_str(&message);
        seen.push('\n');
        if message.contains(wanted) {
            return seen;
        }
    }
}

#[test]
fn ready_reloading_and_stopping_reach_systemd_with_the_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut stack = Stack::start_with(StackConfig {
        own_binaries: true,
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..StackConfig::default()
    });
    let pid = stack.supervisor_pid();
    let ready = until(&systemd, "READY=1");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    assert!(ready.contains("STATUS=3/3 daemons ready"), "{ready}");

    // An upgrade: RELOADING=1 with the monotonic clock, then READY=1 again, same pid.
    stack.ctl_ok(&["reload"]);
    let reloading = until(&systemd, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = until(&systemd, "READY=1");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");

    stack.signal_supervisor(Signal::SIGTERM);
    until(&systemd, "STOPPING=1");
    let status = stack.supervisor.as_mut().unwrap().wait().unwrap();
    assert!(status.success());
}
