//! The phases a daemon reports itself (`PHASE=` lines from core's lifecycle driver) are
//! part of `Supervisor.Watch`, in order with the supervisor's own events about it: a
//! hand-over read from both instances' sides, and a stop.

use std::time::Duration;

use securely_tests::Stack;
use securely_tests::watcher::{Watcher, is};
use serde_json::Value;

/// A bound on each awaited event, not a speed goal.
const WITHIN: Duration = Duration::from_secs(20);

fn pid(event: &Value) -> u32 {
    event["pid"].as_u64().unwrap_or(0) as u32
}

/// `(kind, state, whose)` of each of `events`, `whose` naming the pid ("old", "new").
fn story<'a>(events: &'a [Value], names: &[(u32, &'a str)]) -> Vec<(&'a str, &'a str, &'a str)> {
    events
        .iter()
        .map(|e| {
            let whose = names
                .iter()
                .find(|(p, _)| *p == pid(e))
                .map_or("?", |(_, name)| *name);
            (
                e["kind"].as_str().unwrap_or(""),
                e["state"].as_str().unwrap_or(""),
                whose,
            )
        })
        .collect()
}

#[test]
fn a_handover_and_a_stop_read_with_the_daemons_own_phases() {
    let stack = Stack::start();
    stack.wait_all_ready();
    let mut watcher = Watcher::start(&stack);
    watcher.until("the current state", WITHIN, |e| {
        is(e, "snapshot", "queued", "ready")
    });
    let old = stack.ready_pid("dnsd").unwrap();
    stack.ctl_ok(&["restart", "dnsd", "--quiet"]);
    let new = stack.ready_pid("dnsd").unwrap();
    watcher.until("the old dnsd gone", WITHIN, |e| {
        is(e, "retired", "dnsd", "exited") && pid(e) == old
    });
    let dnsd: Vec<Value> = watcher
        .seen
        .iter()
        .filter(|e| e["daemon"] == "dnsd" && e["kind"] != "restart" && e["kind"] != "snapshot")
        .cloned()
        .collect();
    let names = [(old, "old"), (new, "new")];
    assert_eq!(
        story(&dnsd, &names),
        [
            ("daemon", "prepared", "new"),
            ("daemon_phase", "releasing", "old"),
            ("daemon_phase", "released", "old"),
            ("daemon", "released", "old"),
            ("daemon_phase", "opening", "new"),
            ("daemon_phase", "serving", "new"),
            ("daemon", "ready", "new"),
            ("retired", "draining", "old"),
            ("daemon_phase", "stopping", "old"),
            ("daemon_phase", "drained", "old"),
            ("daemon_phase", "stopped", "old"),
            ("retired", "exited", "old"),
        ],
        "{dnsd:#?}"
    );
    let stopping = dnsd.iter().find(|e| e["state"] == "stopping").unwrap();
    assert_eq!(stopping["detail"], "graceful", "{stopping}");
    let stopped = dnsd.iter().find(|e| e["state"] == "stopped").unwrap();
    assert!(stopped.get("detail").is_none(), "a clean stop: {stopped}");

    // The stack's stop: each daemon drains, says so, and only then is seen exit.
    let serving: Vec<(&str, u32)> = ["proxyd", "dnsd", "queued"]
        .into_iter()
        .map(|d| (d, stack.ready_pid(d).unwrap()))
        .collect();
    let from = watcher.seen.len();
    stack.ctl_ok(&["stop"]);
    watcher.until("terminated", WITHIN, |e| is(e, "phase", "", "terminated"));
    for (daemon, serving_pid) in serving {
        let own: Vec<Value> = watcher.seen[from..]
            .iter()
            .filter(|e| e["daemon"] == daemon && pid(e) == serving_pid)
            .cloned()
            .collect();
        assert_eq!(
            story(&own, &[(serving_pid, "it")]),
            [
                ("daemon", "draining", "it"),
                ("daemon_phase", "stopping", "it"),
                ("daemon_phase", "drained", "it"),
                ("daemon_phase", "stopped", "it"),
                ("daemon", "exited", "it"),
            ],
            "{daemon}: {own:#?}"
        );
        assert_eq!(own[1]["detail"], "graceful", "{own:#?}");
    }
}
