//! `Supervisor.Watch` through `securelyctl watch --json`: the current state first, then
//! the events of a killed daemon's recovery and of a hand-over, in order.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use securely_tests::watcher::{Watcher, is};
use securely_tests::{Stack, StackConfig, bin};
use serde_json::Value;

/// A bound on each awaited event, not a speed goal.
const WITHIN: Duration = Duration::from_secs(20);

/// The next event about dnsd, which must be of `kind` and `state` (the phases dnsd
/// reports itself are `daemon_phases.rs`'s).
fn next_dnsd(watcher: &mut Watcher, kind: &str, state: &str) -> Value {
    let event = watcher.until(state, WITHIN, |e| {
        e["daemon"] == "dnsd" && e["kind"] != "daemon_phase"
    });
    assert!(is(&event, kind, "dnsd", state), "{event}");
    event
}

fn pid(event: &Value) -> u32 {
    event["pid"].as_u64().unwrap_or(0) as u32
}

#[test]
fn a_watcher_sees_the_state_then_a_kill_recovery_and_a_handover_in_order() {
    let stack = Stack::start();
    stack.wait_all_ready();
    let mut watcher = Watcher::start(&stack);

    // The current state: the supervisor's phase, then each daemon.
    let phase = watcher.until("the phase", WITHIN, |_| true);
    assert_eq!(phase["kind"], "phase", "{phase}");
    assert_eq!(phase["state"], "running", "{phase}");
    for daemon in ["proxyd", "dnsd", "queued"] {
        let snapshot = watcher.until("a snapshot", WITHIN, |_| true);
        assert!(is(&snapshot, "snapshot", daemon, "ready"), "{snapshot}");
        assert!(pid(&snapshot) > 0, "{snapshot}");
    }
    let old = pid(&watcher.seen[2]);
    assert_eq!(Some(old), stack.ready_pid("dnsd"));

    // A SIGKILL, and the recovery.
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let exited = watcher.until("dnsd exited", WITHIN, |e| is(e, "daemon", "dnsd", "exited"));
    assert_eq!(pid(&exited), old, "{exited}");
    assert!(
        exited["detail"].as_str().unwrap().contains("SIGKILL"),
        "{exited}"
    );
    let backoff = next_dnsd(&mut watcher, "daemon", "backoff");
    assert!(
        backoff["next_start_unix_ms"].as_u64().unwrap() >= backoff["unix_ms"].as_u64().unwrap()
    );
    let starting = next_dnsd(&mut watcher, "daemon", "starting");
    let new = pid(&starting);
    assert!(new > 0 && new != old, "{starting}");
    assert_eq!(pid(&next_dnsd(&mut watcher, "daemon", "prepared")), new);
    assert_eq!(pid(&next_dnsd(&mut watcher, "daemon", "ready")), new);

    // A requested restart: a hand-over from the serving instance.
    stack.ctl_ok(&["restart", "dnsd"]);
    let running = watcher.until("the restart", WITHIN, |e| e["kind"] == "restart");
    assert!(is(&running, "restart", "dnsd", "running"), "{running}");
    let id = running["id"].as_u64().unwrap();
    let third = pid(&next_dnsd(&mut watcher, "daemon", "prepared"));
    assert_eq!(pid(&next_dnsd(&mut watcher, "daemon", "released")), new);
    assert_eq!(pid(&next_dnsd(&mut watcher, "daemon", "ready")), third);
    assert_ne!(third, new);
    assert_eq!(pid(&next_dnsd(&mut watcher, "retired", "draining")), new);
    let done = watcher.until("the restart's end", WITHIN, |e| e["kind"] == "restart");
    assert!(is(&done, "restart", "dnsd", "done"), "{done}");
    assert_eq!(done["id"].as_u64(), Some(id));
    assert_eq!(pid(&done), third);
    assert_eq!(stack.ready_pid("dnsd"), Some(third));
    let gone = watcher.until("the old dnsd gone", WITHIN, |e| {
        is(e, "retired", "dnsd", "exited") && pid(e) == new
    });
    assert!(!gone["detail"].as_str().unwrap_or("").is_empty(), "{gone}");

    // Numbered in order: the current state at the number it was taken at, then each
    // event one more.
    let seqs: Vec<u64> = watcher
        .seen
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs[..4].iter().all(|s| *s == seqs[0]), "{seqs:?}");
    assert!(seqs[3..].windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        watcher
            .seen
            .iter()
            .all(|e| e["unix_ms"].as_u64().unwrap() > 0)
    );

    // The stream ends when the stack stops, with the supervisor's last phases.
    stack.ctl_ok(&["stop"]);
    watcher.until("graceful_terminate", WITHIN, |e| {
        is(e, "phase", "", "graceful_terminate")
    });
    watcher.until("terminated", WITHIN, |e| is(e, "phase", "", "terminated"));
    assert!(
        watcher.ended_ok(WITHIN),
        "securelyctl watch did not end: {:#?}",
        watcher.seen
    );
}

#[test]
fn an_upgrade_ends_the_old_stream_at_the_exec_and_watch_goes_on_to_the_upgrades_end() {
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    let mut watcher = Watcher::start(&stack);
    watcher.until("the current state", WITHIN, |e| e["kind"] == "phase");
    stack.install_binaries();
    let out = stack.ctl_ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    watcher.until("upgrading", WITHIN, |e| is(e, "phase", "", "upgrading"));
    let began = watcher.until("the upgrade", WITHIN, |e| e["kind"] == "upgrade");
    assert_eq!(began["state"], "running", "{began}");
    assert_eq!(began["id"], 1, "{began}");
    let exec = watcher.until("re_executing", WITHIN, |e| {
        is(e, "phase", "", "re_executing")
    });
    // The old image's stream ended there; securelyctl watch goes on on the new image's,
    // with the next number, up to the upgrade's end.
    let next = watcher.until("the new image's first event", WITHIN, |_| true);
    assert_eq!(
        next["seq"].as_u64(),
        exec["seq"].as_u64().map(|seq| seq + 1),
        "{next}"
    );
    let ended = watcher.until("the upgrade's end", WITHIN, |e| e["kind"] == "upgrade");
    assert_eq!(
        (&ended["state"], &ended["id"]),
        (&"done".into(), &1.into()),
        "{ended}"
    );
    assert_eq!(stack.status().unwrap()["upgrade"]["state"], "done");
    // A watcher started now begins with the current phase.
    let mut fresh = Watcher::start(&stack);
    let phase = fresh.until("the phase", WITHIN, |_| true);
    assert!(is(&phase, "phase", "", "running"), "{phase}");
}

#[test]
fn a_watcher_that_never_reads_holds_up_neither_restarts_nor_the_stop() {
    let stack = Stack::start();
    stack.wait_all_ready();
    // Connected, its stream never read.
    let _stalled = Command::new(bin("securelyctl"))
        .arg("--socket")
        .arg(stack.control_socket())
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("run securelyctl watch");
    for _ in 0..RESTARTS {
        for daemon in ["proxyd", "dnsd", "queued"] {
            stack.ctl_ok(&["restart", daemon]);
        }
    }
    let status = stack.daemon_status("dnsd").unwrap();
    assert_eq!(status["restarts"], RESTARTS, "{status}");
    // A reading watcher still gets the current state, and so does one printing lines.
    let mut watcher = Watcher::start(&stack);
    watcher.until("the phase", WITHIN, |e| is(e, "phase", "", "running"));
    let mut plain = KillOnDrop(
        Command::new(bin("securelyctl"))
            .arg("--socket")
            .arg(stack.control_socket())
            .arg("watch")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run securelyctl watch"),
    );
    let mut lines = BufReader::new(plain.0.stdout.take().expect("piped")).lines();
    let first = lines.next().expect("a first line").expect("text");
    stack.ctl_ok(&["stop"]);
    assert!(watcher.ended_ok(WITHIN), "{:#?}", watcher.seen);
    // The stream has ended: the rest of its lines are there.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(first.contains(" supervisor phase running pid="), "{first}");
    assert!(
        rest.last()
            .is_some_and(|l| l.contains(" supervisor phase terminated")),
        "{rest:#?}"
    );
    assert!(plain.0.wait().expect("wait").success());
    assert!(
        !stack.log().contains("cutting gRPC calls short"),
        "{}",
        stack.log()
    );
}

/// Restarts of each daemon while a watcher stalls. Their events fit in the connection's
/// flow-control window, so this shows a stalled watcher costs nothing up to there; a
/// watcher stalled past the supervisor's backlog is `slow_watcher.rs`.
const RESTARTS: u64 = 5;

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
