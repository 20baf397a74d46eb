//! Zero downtime: per-daemon restarts and whole-stack upgrades while traffic flows, and
//! failed ones that change nothing.

use std::time::Duration;

use nix::sys::signal::Signal;
use securely_tests::load::{Load, Report, Web};
use securely_tests::tls::{self, TlsClient};
use securely_tests::{Stack, StackConfig, alive, http, wait_for};

/// Rounds of restarts (each daemon once per round) under load.
const RESTART_ROUNDS: usize = 3;
/// Upgrades in a row under load.
const RELOADS: usize = 2;
/// How long an upgrade may take in these tests.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(60);

fn own_binaries() -> StackConfig {
    StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    }
}

/// A stack with two sites on a live backend, `app` over HTTP and `secure` over https,
/// and load running against them: HTTP to `app.test`; HTTPS to `secure.test` over
/// HTTP/1.1 and HTTP/2 (by ALPN) through clients trusting only the exported local CA.
async fn loaded(config: StackConfig) -> (Stack, http::Backend, Load) {
    let stack = Stack::start_with(config);
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    stack.ctl_ok(&["site:link", "secure", &backend.addr.to_string()]);
    stack.ctl_ok(&["site:secure", "secure"]);
    let ca = stack.ctl_ok(&["ca:export"]);
    let mut load = Load::start(
        stack.http,
        "app.test",
        stack.dns,
        "app.test.",
        stack.socket("queued"),
    );
    for alpn in [tls::HTTP1, tls::H2_THEN_HTTP1] {
        let client = TlsClient::trusting(&ca, alpn).expect("a client trusting the CA");
        let https = Web::Https {
            addr: stack.https,
            client,
        };
        load.add_web(https, "secure.test");
    }
    // Traffic flows before anything happens.
    let (http, https) = (load.http_ok(), load.https_ok());
    wait_for("load to flow", Duration::from_secs(10), || {
        (load.http_ok() > http + 20 && load.https_ok() > https + 20).then_some(())
    });
    (stack, backend, load)
}

fn assert_clean(stack: &Stack, report: &Report) {
    println!("{report:#?}");
    if !report.failures.is_empty() {
        println!("--- the stack's log ---\n{}", stack.log());
    }
    assert!(
        report.failures.is_empty(),
        "failures under load: {:#?}",
        report.failures
    );
    assert!(
        report.http_new_ok > 0 && report.http_kept_ok > 0,
        "{report:?}"
    );
    assert!(
        report.https_new_ok > 0 && report.https_kept_ok > 0,
        "{report:?}"
    );
    assert!(report.h2_new_ok > 0 && report.h2_kept_ok > 0, "{report:?}");
    assert!(report.dns_udp_ok > 0 && report.dns_tcp_ok > 0, "{report:?}");
    assert!(
        report.pushed > 0 && report.delivered >= report.pushed,
        "{report:?}"
    );
}

fn pids(stack: &Stack) -> Vec<u32> {
    ["proxyd", "dnsd", "queued"]
        .iter()
        .map(|d| stack.ready_pid(d).expect("ready"))
        .collect()
}

fn wait_upgrade(stack: &Stack, id: u64) -> serde_json::Value {
    wait_for("the upgrade to finish", UPGRADE_DEADLINE, || {
        let upgrade = stack.status()?["upgrade"].clone();
        (upgrade["id"] == id && upgrade["state"] != "running").then_some(upgrade)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_under_load_lose_nothing() {
    let (stack, _backend, load) = loaded(StackConfig::default()).await;
    // A request in flight when the hand-over starts completes.
    let slow = tokio::spawn(http::get(stack.http, "app.test", "/slow/1500"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..RESTART_ROUNDS {
        for daemon in ["proxyd", "dnsd", "queued"] {
            let old = stack.ready_pid(daemon).unwrap();
            let out = stack.ctl_ok(&["restart", daemon]);
            assert!(out.contains("restarted"), "{out}");
            let new = stack.ready_pid(daemon).unwrap();
            assert_ne!(new, old, "{daemon} has a new instance");
            // The old one drains and goes, by work (nothing is slow but one request).
            wait_for(
                &format!("old {daemon} gone"),
                Duration::from_secs(10),
                || (!alive(old)).then_some(()),
            );
        }
    }
    let slow = slow.await.unwrap().expect("the slow request completes");
    assert_eq!(slow.status, 200, "{}", slow.body);
    let report = load.finish().await;
    assert_clean(&stack, &report);
    let status = stack.daemon_status("queued").unwrap();
    assert_eq!(status["restarts"], RESTART_ROUNDS as u64, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_keep_the_pid_and_lose_nothing() {
    let (stack, _backend, load) = loaded(own_binaries()).await;
    let supervisor = stack.supervisor_pid();
    for _ in 0..RELOADS {
        let before = pids(&stack);
        stack.install_binaries();
        let out = stack.ctl_ok(&["reload"]);
        assert!(out.contains("reloaded"), "{out}");
        let after = pids(&stack);
        for (old, new) in before.iter().zip(&after) {
            assert_ne!(
                old, new,
                "every daemon runs a new instance: {before:?} -> {after:?}"
            );
        }
        assert_eq!(stack.supervisor_pid(), supervisor);
        assert!(alive(supervisor));
    }
    // SIGQUIT does the same.
    let before = pids(&stack);
    let id = stack.status().unwrap()["upgrade"]["id"].as_u64().unwrap() + 1;
    stack.signal_supervisor(Signal::SIGQUIT);
    let upgrade = wait_upgrade(&stack, id);
    assert_eq!(upgrade["state"], "done", "{upgrade}");
    let after = pids(&stack);
    assert!(
        before.iter().zip(&after).all(|(a, b)| a != b),
        "{before:?} -> {after:?}"
    );
    let report = load.finish().await;
    assert_clean(&stack, &report);
    assert_eq!(stack.supervisor_pid(), supervisor);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_to_a_broken_binary_fails_and_the_old_instance_serves_on() {
    let (stack, _backend, load) = loaded(own_binaries()).await;
    // A binary that is not there at all.
    let old = stack.ready_pid("dnsd").unwrap();
    std::fs::remove_file(stack.bin_dir.join("securely-dnsd")).unwrap();
    let out = stack.ctl(&["restart", "dnsd"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such file"), "{err}");
    assert_eq!(stack.ready_pid("dnsd"), Some(old));
    // Binaries that fail at once.
    for daemon in ["proxyd", "dnsd", "queued"] {
        let old = stack.ready_pid(daemon).unwrap();
        stack.break_binary(&format!("securely-{daemon}"));
        let out = stack.ctl(&["restart", daemon]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("restart of {daemon} failed")) && err.contains("status 3"),
            "{err}"
        );
        assert_eq!(
            stack.ready_pid(daemon),
            Some(old),
            "the old {daemon} still serves"
        );
    }
    // An upgrade with a broken daemon binary is refused by its check: nothing changes.
    let before = pids(&stack);
    let out = stack.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing changed") && err.contains("broken build"),
        "{err}"
    );
    assert_eq!(pids(&stack), before);
    let report = load.finish().await;
    assert_clean(&stack, &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_a_broken_config_changes_nothing() {
    let (stack, _backend, load) = loaded(own_binaries()).await;
    let before = pids(&stack);
    let good = std::fs::read_to_string(&stack.config).unwrap();
    std::fs::write(&stack.config, format!("{good}grace_period_seconds: lots\n")).unwrap();
    let out = stack.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing changed") && err.contains("grace_period_seconds"),
        "{err}"
    );
    assert_eq!(pids(&stack), before);
    let status = stack.status().unwrap();
    assert_eq!(status["upgrade"]["state"], "failed", "{status}");
    // Nothing runs any more (see one_at_a_time.rs): a fixed config reloads.
    std::fs::write(&stack.config, good).unwrap();
    stack.ctl_ok(&["reload"]);
    let report = load.finish().await;
    assert_clean(&stack, &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn pingoras_upgrade_path_hands_the_sockets_to_a_supervisor_started_with_u() {
    let (stack, _backend, load) = loaded(StackConfig::default()).await;
    let old_supervisor = stack.supervisor_pid();
    let old_daemons = pids(&stack);
    // `securely -u -d` waits on upgrade_sock; SIGQUIT to the running one sends the sockets.
    let waiting = stack.start_waiting_supervisor();
    let upgrade_sock = stack.upgrade_socket();
    stack.signal_supervisor(Signal::SIGQUIT);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The new supervisor serves with new daemons; the old one drains and exits.
    let new_supervisor = stack.supervisor_pid();
    assert_ne!(new_supervisor, old_supervisor);
    wait_for(
        "the old supervisor to exit",
        Duration::from_secs(15),
        || (!alive(old_supervisor)).then_some(()),
    );
    let new_daemons = pids(&stack);
    assert!(
        old_daemons.iter().all(|p| !new_daemons.contains(p)),
        "{old_daemons:?} {new_daemons:?}"
    );
    assert!(stack.control_socket().exists() && !upgrade_sock.exists());
    let report = load.finish().await;
    assert_clean(&stack, &report);
    // The sites survived in proxyd's tree.
    let reply = http::get(stack.http, "app.test", "/").await.unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_instance_that_dies_after_the_release_hands_the_tree_back() {
    let (stack, _backend, load) = loaded(own_binaries()).await;
    stack.ctl_ok(&["dns:set", "kept.test", "A", "10.0.0.7"]);
    for daemon in ["proxyd", "dnsd", "queued"] {
        let old = stack.ready_pid(daemon).unwrap();
        stack.dies_on_acquire_binary(&format!("securely-{daemon}"));
        let out = stack.ctl(&["restart", daemon]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exited before ready"), "{err}");
        // The old instance took its tree back and serves, gRPC included.
        assert_eq!(
            stack.ready_pid(daemon),
            Some(old),
            "the old {daemon} serves on"
        );
    }
    let records = stack.ctl_ok(&["dns:list"]);
    assert!(records.contains("10.0.0.7"), "{records}");
    stack.ctl_ok(&["site:list"]);
    stack.ctl_ok(&["queue:stats"]);
    let report = load.finish().await;
    assert_clean(&stack, &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_binds_the_listeners_the_settings_add_and_closes_those_they_drop() {
    let stack = Stack::start_with(own_binaries());
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    let extra: std::net::SocketAddr = format!("127.0.0.1:{}", securely_tests::free_port())
        .parse()
        .unwrap();
    let original = std::fs::read_to_string(&stack.config).unwrap();
    let both = original.replace(
        &format!("listen: [\"{}\"]", stack.http),
        &format!("listen: [\"{}\", \"{extra}\"]", stack.http),
    );
    assert_ne!(both, original);
    std::fs::write(&stack.config, &both).unwrap();
    stack.ctl_ok(&["reload"]);
    for addr in [stack.http, extra] {
        let reply = http::get(addr, "app.test", "/").await.unwrap();
        assert_eq!(reply.status, 200, "{addr}: {}", reply.body);
    }
    // Dropped again: once the instance that had it is gone, nothing listens there.
    let before = stack.ready_pid("proxyd").unwrap();
    std::fs::write(&stack.config, &original).unwrap();
    stack.ctl_ok(&["reload"]);
    wait_for("the old proxyd to exit", Duration::from_secs(10), || {
        (!alive(before)).then_some(())
    });
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "{extra} still listens"
    );
    let reply = http::get(stack.http, "app.test", "/").await.unwrap();
    assert_eq!(reply.status, 200);
}

#[test]
fn a_stop_during_an_upgrade_is_carried_out() {
    for stop in [Signal::SIGTERM, Signal::SIGINT] {
        let mut stack = Stack::start_with(own_binaries());
        let daemons = pids(&stack);
        stack.signal_supervisor(Signal::SIGQUIT);
        std::thread::sleep(Duration::from_millis(30));
        stack.signal_supervisor(stop);
        let mut supervisor = stack.supervisor.take().unwrap();
        let status = wait_for("the supervisor to exit", Duration::from_secs(20), || {
            supervisor.try_wait().unwrap()
        });
        assert!(status.success(), "{stop}: {status}\n{}", stack.log());
        wait_for("every daemon to exit", Duration::from_secs(5), || {
            daemons.iter().all(|p| !alive(*p)).then_some(())
        });
        let left: Vec<String> = std::fs::read_dir(stack.run_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{stop}: left behind: {left:?}");
    }
}
