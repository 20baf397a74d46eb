//! `-d` and the signals that stop the stack.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use securely_tests::{Stack, StackConfig, alive, bin, wait_for};

fn leftovers(stack: &Stack) -> Vec<String> {
    std::fs::read_dir(stack.run_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemon_mode_returns_only_when_ready_and_sigterm_leaves_nothing_behind() {
    let stack = Stack::prepare(StackConfig::default());
    let out = Command::new(bin("securely"))
        .arg("-d")
        .arg("-c")
        .arg(&stack.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ready the moment -d returns: no waiting here.
    let status = stack.status().expect("the supervisor answers at once");
    let daemons = status["daemons"].as_array().unwrap();
    assert!(daemons.iter().all(|d| d["state"] == "ready"), "{status}");
    let pid = stack.supervisor_pid();
    assert_eq!(status["supervisor"]["pid"].as_u64().unwrap() as u32, pid);
    assert!(alive(pid));
    let daemon_pids: Vec<u32> = daemons
        .iter()
        .map(|d| d["pid"].as_u64().unwrap() as u32)
        .collect();

    stack.signal_supervisor(Signal::SIGTERM);
    let started = Instant::now();
    wait_for("the supervisor to exit", Duration::from_secs(15), || {
        (!alive(pid)).then_some(())
    });
    // Draining idle daemons is work-bound, not timer-bound.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for daemon in daemon_pids {
        assert!(!alive(daemon), "daemon {daemon} outlived the supervisor");
    }
    assert!(!stack.pid_file().exists());
    assert_eq!(
        leftovers(&stack),
        Vec::<String>::new(),
        "sockets left behind"
    );
}

#[test]
fn daemon_mode_reports_a_failed_start_up() {
    let stack = Stack::prepare(StackConfig::default());
    let _taken = std::net::UdpSocket::bind(stack.dns).unwrap();
    let out = Command::new(bin("securely"))
        .arg("-d")
        .arg("-c")
        .arg(&stack.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dns.listen[0]"), "{err}");
}

#[test]
fn sigint_stops_fast_and_leaves_nothing_behind() {
    let mut stack = Stack::start();
    let status = stack.wait_all_ready();
    let daemon_pids: Vec<u32> = status["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pid"].as_u64().unwrap() as u32)
        .collect();
    stack.signal_supervisor(Signal::SIGINT);
    let child = stack.supervisor.as_mut().unwrap();
    let exit = wait_for("the supervisor to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}\n{}", stack.log());
    for daemon in daemon_pids {
        wait_for("daemons gone", Duration::from_secs(2), || {
            (!alive(daemon)).then_some(())
        });
    }
    assert!(!stack.pid_file().exists());
    assert_eq!(leftovers(&stack), Vec::<String>::new());
}

#[test]
fn stop_over_grpc_stops_the_stack() {
    let mut stack = Stack::start();
    stack.ctl_ok(&["stop"]);
    let child = stack.supervisor.as_mut().unwrap();
    let exit = wait_for("the supervisor to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success());
}
