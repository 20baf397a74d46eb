//! `-d` and the signals that stop the stack.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use securely_tests::{Stack, StackConfig, alive, bin, http, wait_for};

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
    let out = stack.securely(&["-d"]);
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
    // Before the fork: a port taken.
    let stack = Stack::prepare(StackConfig::default());
    let taken = std::net::UdpSocket::bind(stack.dns).unwrap();
    let out = stack.securely(&["-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dns.listen[0]"), "{err}");
    assert_eq!(
        leftovers(&stack),
        Vec::<String>::new(),
        "sockets left behind"
    );
    drop(taken);

    // After the fork: a daemon that cannot start (its tree is a file), reported by the
    // background supervisor through the start-up pipe.
    std::fs::create_dir_all(stack.dir.path().join("data")).unwrap();
    std::fs::write(stack.dir.path().join("data/queued"), b"not a tree").unwrap();
    let out = stack.securely(&["-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("start-up failed") && err.contains("queued"),
        "{err}"
    );
    wait_for(
        "the background supervisor gone",
        Duration::from_secs(10),
        || leftovers(&stack).is_empty().then_some(()),
    );
}

/// A stack with a 30 s grace period, and a request to a site whose backend takes `ms`
/// milliseconds, in flight.
async fn stack_with_request_in_flight(
    ms: u64,
) -> (
    Stack,
    http::Backend,
    tokio::task::JoinHandle<std::io::Result<http::Reply>>,
) {
    let stack = Stack::start_with(StackConfig {
        extra_yaml: "grace_period_seconds: 30\n".into(),
        ..StackConfig::default()
    });
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "slow", &backend.addr.to_string()]);
    let http_addr = stack.http;
    let path = format!("/slow/{ms}");
    let in_flight = tokio::spawn(async move { http::get(http_addr, "slow.test", &path).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (stack, backend, in_flight)
}

/// Waits for the foreground supervisor to exit and returns how long that took since
/// `since`.
fn exit_time(stack: &mut Stack, since: Instant) -> Duration {
    let child = stack.supervisor.as_mut().unwrap();
    let exit = wait_for("the supervisor to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_request_in_flight_finish_and_stops_by_work() {
    let (mut stack, _backend, in_flight) = stack_with_request_in_flight(1500).await;
    let started = Instant::now();
    stack.signal_supervisor(Signal::SIGTERM);
    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(reply.status, 200);
    // By work: long before the 30 s grace period.
    let took = exit_time(&mut stack, started);
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_does_not_wait_for_work_in_flight() {
    let (mut stack, _backend, in_flight) = stack_with_request_in_flight(20_000).await;
    let started = Instant::now();
    stack.signal_supervisor(Signal::SIGINT);
    let took = exit_time(&mut stack, started);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the slow request was cut"
    );
}

#[test]
fn daemons_inherit_no_fd_but_their_sockets_and_no_blocked_signal() {
    let stack = Stack::prepare(StackConfig::default());
    // An fd the supervisor itself inherits without close-on-exec.
    let marker = stack.dir.path().join("leak-marker");
    let file = std::fs::File::create(&marker).unwrap();
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let log = std::fs::File::create(stack.log_path()).unwrap();
    let mut child = Command::new(bin("securely"))
        .arg("-c")
        .arg(&stack.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    drop(file);
    let status = stack.wait_all_ready();
    for daemon in status["daemons"].as_array().unwrap() {
        let pid = daemon["pid"].as_u64().unwrap();
        // Nor the supervisor's blocked signals: a daemon must hear SIGTERM.
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            proc_status.contains("SigBlk:\t0000000000000000"),
            "{} starts with signals blocked:\n{proc_status}",
            daemon["name"]
        );
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
            assert_ne!(target, marker, "{} inherited the marker fd", daemon["name"]);
        }
    }
    let supervisor_fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    assert!(
        supervisor_fds.contains(&marker),
        "the supervisor did inherit it"
    );
    stack.signal_supervisor(Signal::SIGINT);
    let _ = child.wait();
}

#[test]
fn securelyctl_stop_returns_once_the_stack_is_gone() {
    let mut stack = Stack::start();
    let pid = stack.supervisor_pid();
    stack.ctl_ok(&["stop"]);
    assert!(!stack.control_socket().exists());
    let child = stack.supervisor.as_mut().unwrap();
    let exit = wait_for("the supervisor reaped", Duration::from_secs(5), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success());
    assert!(!alive(pid));
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
fn sigterm_during_start_up_and_during_a_restart_leaves_nothing_behind() {
    // During start-up: the signal arrives before the daemons are ready.
    let stack = Stack::prepare(StackConfig::default());
    let mut child = Command::new(bin("securely"))
        .arg("-c")
        .arg(&stack.config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    wait_for("the pid file", Duration::from_secs(10), || {
        stack.pid_file().exists().then_some(())
    });
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let exit = wait_for("the supervisor to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}");
    assert_eq!(leftovers(&stack), Vec::<String>::new());

    // During a restart: the stop is not held up by it.
    let mut stack = Stack::start();
    let socket = stack.control_socket();
    let restart = std::thread::spawn(move || {
        Command::new(bin("securelyctl"))
            .arg("--socket")
            .arg(socket)
            .args(["restart", "queued"])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(20));
    stack.signal_supervisor(Signal::SIGTERM);
    let child = stack.supervisor.as_mut().unwrap();
    let exit = wait_for("the supervisor to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert!(exit.success());
    // The restart either finished before the stop or was told why it did not.
    let out = restart.join().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("stopping") || err.contains("cannot reach"),
            "{err}"
        );
    }
    assert_eq!(leftovers(&stack), Vec::<String>::new());
}
