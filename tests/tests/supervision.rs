//! The supervisor restarts daemons that die, and holds their sockets meanwhile.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use securely_tests::{Stack, alive, dns, http, wait_for};

/// How long a killed daemon may take to be back and serving before the test calls it a
/// hang. A bound, not a speed goal: the time from SIGKILL to serving is measured against
/// the peers in bench/lifecycle.sh (a loaded CI machine must not fail a correct restart).
const BACK_WITHIN: Duration = Duration::from_secs(20);

fn kill9(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemon_is_restarted_and_serves_again() {
    let stack = Stack::start();
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);

    for daemon in ["proxyd", "dnsd", "queued"] {
        let old = stack.ready_pid(daemon).unwrap();
        let killed_at = Instant::now();
        kill9(old);
        let new = stack.wait_replaced(daemon, old, BACK_WITHIN);
        // Serving, checked the way a user would.
        match daemon {
            "proxyd" => {
                let reply = http::get(stack.http, "app.test", "/").await.unwrap();
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
            "dnsd" => {
                let answer = dns::udp(stack.dns, "app.test.", RecordType::A);
                assert_eq!(dns::answers(&answer), ["127.0.0.1"]);
            }
            _ => {
                stack.ctl_ok(&["queue:stats"]);
            }
        }
        assert!(
            killed_at.elapsed() < BACK_WITHIN,
            "{daemon} took {:?}",
            killed_at.elapsed()
        );
        let status = stack.daemon_status(daemon).unwrap();
        assert_eq!(status["restarts"], 1, "{status}");
        assert!(
            status["last_exit"].as_str().unwrap().contains("SIGKILL"),
            "{status}"
        );
        assert_ne!(new, old);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_made_while_proxyd_is_down_is_served_once_it_is_back() {
    let stack = Stack::start();
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    let old = stack.ready_pid("proxyd").unwrap();
    // The restart waits out the first backoff (100 ms): connect in that gap, once the
    // old instance is surely gone.
    kill9(old);
    wait_for("the old proxyd gone", Duration::from_secs(5), || {
        (!alive(old)).then_some(())
    });
    // The supervisor holds the listener: the connection is accepted by the kernel.
    let stream = tokio::net::TcpStream::connect(stack.http)
        .await
        .expect("connect while proxyd is down is not refused");
    let reply = http::get_on(stream, "app.test", "/while-down")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("path: /while-down"), "{}", reply.body);
    stack.wait_replaced("proxyd", old, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_replaces_the_daemon_and_reports_the_new_pid() {
    let stack = Stack::start();
    for daemon in ["proxyd", "dnsd", "queued"] {
        let old = stack.ready_pid(daemon).unwrap();
        let out = stack.ctl_ok(&["restart", daemon]);
        let new = stack.ready_pid(daemon).expect("ready when restart returns");
        assert_ne!(new, old);
        assert!(out.contains(&new.to_string()), "{out}");
    }
    let out = stack.ctl(&["restart", "nginx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown daemon") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_crash_loop_is_visible_and_the_supervisor_survives_it() {
    let stack = Stack::start();
    // Break queued's tree so every new instance fails to open it, then kill the running
    // one (the running instance keeps its open files; the path is what changes).
    let tree = stack.dir.path().join("data/queued");
    std::fs::rename(&tree, stack.dir.path().join("data/queued.moved")).unwrap();
    std::fs::write(&tree, b"not a directory").unwrap();
    kill9(stack.ready_pid("queued").unwrap());
    let status = wait_for("crash loop visible", Duration::from_secs(20), || {
        let d = stack.daemon_status("queued")?;
        (d["consecutive_failures"].as_u64()? >= 3).then_some(d)
    });
    assert!(
        ["backoff", "failed", "starting"].contains(&status["state"].as_str().unwrap()),
        "{status}"
    );
    assert!(!status["last_exit"].as_str().unwrap().is_empty());
    // The others keep serving and the supervisor answers.
    assert_eq!(stack.daemon_status("dnsd").unwrap()["state"], "ready");
    // A restart requested meanwhile is the next attempt, at once; when it fails too, the
    // answer says why, the failure counts and the backoff goes on.
    let before = status["consecutive_failures"].as_u64().unwrap();
    let out = stack.ctl(&["restart", "queued"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restart of queued failed"), "{err}");
    let after = stack.daemon_status("queued").unwrap();
    assert!(
        after["consecutive_failures"].as_u64().unwrap() > before,
        "{after}"
    );
    // Repair: the next attempt succeeds.
    std::fs::remove_file(&tree).unwrap();
    stack.ctl_ok(&["restart", "queued"]);
    assert!(stack.ready_pid("queued").is_some());
}
