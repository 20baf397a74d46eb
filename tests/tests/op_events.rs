//! `securelyctl restart` and `reload` print their own operation's events as they happen
//! (in `securelyctl watch`'s plain format, or its JSON lines with `--json`), then the
//! result; `--quiet` only the result. `reload` prints the events on both sides of the
//! supervisor's exec.

use securely_tests::{Stack, StackConfig};
use serde_json::Value;

/// The index of the first line after `from` that contains every one of `parts`.
fn find(lines: &[&str], from: usize, parts: &[&str]) -> usize {
    from + lines[from..]
        .iter()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} after line {from}: {lines:#?}"))
}

#[test]
fn restart_prints_its_events_in_order_then_the_result_and_quiet_only_the_result() {
    let stack = Stack::start();
    stack.wait_all_ready();
    let old = stack.ready_pid("dnsd").unwrap();
    let out = stack.ctl_ok(&["restart", "dnsd"]);
    let lines: Vec<&str> = out.lines().collect();
    let running = find(&lines, 0, &[" dnsd restart running", " id=1"]);
    let prepared = find(&lines, running, &[" dnsd daemon prepared pid="]);
    let released = find(
        &lines,
        prepared,
        &[&format!(" dnsd daemon released pid={old}")],
    );
    let ready = find(&lines, released, &[" dnsd daemon ready pid="]);
    let done = find(&lines, ready, &[" dnsd restart done", " id=1"]);
    let new = stack.ready_pid("dnsd").unwrap();
    assert_eq!(
        lines[done + 1..],
        [format!(
            "dnsd restarted (pid {new}; pid {old} finishes its in-flight work)"
        )],
        "{out}"
    );
    // Every line before the result is an event about this restart or dnsd.
    assert!(
        lines[..done]
            .iter()
            .all(|l| l.starts_with('#') && l.contains(" dnsd ")),
        "{out}"
    );
    // Not another daemon's events, and no event from before the restart.
    assert_eq!(running, 0, "{out}");
    // Event records are for the journal only, not this stderr log.
    let log = stack.log();
    assert!(
        !log.contains("restart running id=") && !log.contains("securely_"),
        "{log}"
    );

    let out = stack.ctl_ok(&["restart", "dnsd", "--quiet"]);
    let newer = stack.ready_pid("dnsd").unwrap();
    assert_eq!(
        out,
        format!("dnsd restarted (pid {newer}; pid {new} finishes its in-flight work)\n")
    );

    // A refusal: no events, today's error and exit code.
    let out = stack.ctl(&["restart", "nginx"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// The numbers of the event lines (`#N ...`).
fn seqs(lines: &[&str]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix('#')?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn reload_prints_the_upgrades_events_on_both_sides_of_the_exec_then_its_result() {
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    stack.install_binaries();
    let out = stack.ctl_ok(&["reload"]);
    let lines: Vec<&str> = out.lines().collect();
    let began = find(&lines, 0, &[" supervisor upgrade running", " id=1"]);
    let exec = find(&lines, began, &[" supervisor phase re_executing"]);
    // The new image's events: the upgrade goes on, each daemon is handed over.
    let resumed = find(&lines, exec, &[" supervisor phase upgrading"]);
    assert_eq!(resumed, exec + 1, "{out}");
    let mut at = resumed;
    for daemon in ["proxyd", "dnsd", "queued"] {
        at = find(&lines, at, &[&format!(" {daemon} daemon prepared pid=")]);
        at = find(&lines, at, &[&format!(" {daemon} daemon ready pid=")]);
    }
    let done = find(&lines, at, &[" supervisor upgrade done", " id=1"]);
    assert_eq!(lines.len(), done + 2, "{out}");
    assert!(lines[done + 1].starts_with("reloaded in "), "{out}");
    let numbers = seqs(&lines);
    assert_eq!(numbers.len(), done + 1, "{out}");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{out}");

    stack.install_binaries();
    let out = stack.ctl_ok(&["reload", "--quiet"]);
    assert!(
        out.starts_with("reloaded in ") && out.lines().count() == 1,
        "{out}"
    );
}

/// Every line of `out` as JSON.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[test]
fn with_json_the_events_and_the_result_are_json_lines() {
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    let old = stack.ready_pid("queued").unwrap();
    let lines = json_lines(&stack.ctl_ok(&["restart", "queued", "--json"]));
    let new = stack.ready_pid("queued").unwrap();
    let (result, events) = lines.split_last().unwrap();
    assert_eq!(result["kind"], "result", "{lines:#?}");
    assert_eq!(result["state"], "restarted");
    assert_eq!(result["daemon"], "queued");
    assert_eq!(result["pid"], new);
    assert_eq!(result["old_pid"], old);
    assert_eq!(events[0]["kind"], "restart", "{lines:#?}");
    assert_eq!(events[0]["state"], "running");
    let last = events.last().unwrap();
    assert_eq!(
        (&last["kind"], &last["state"]),
        (&"restart".into(), &"done".into())
    );
    assert!(
        events
            .iter()
            .all(|e| e["seq"].as_u64().is_some() && e["daemon"] == "queued")
    );

    let lines = json_lines(&stack.ctl_ok(&["restart", "queued", "--json", "--quiet"]));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "result");
    assert_eq!(lines[0]["old_pid"], new);

    stack.install_binaries();
    let lines = json_lines(&stack.ctl_ok(&["reload", "--json"]));
    let (result, events) = lines.split_last().unwrap();
    assert_eq!(result["kind"], "result", "{lines:#?}");
    assert_eq!(result["state"], "reloaded");
    assert_eq!(result["id"], 1);
    assert!(result["took_ms"].as_u64().is_some(), "{result}");
    let done = events.last().unwrap();
    assert_eq!(
        (&done["kind"], &done["state"]),
        (&"upgrade".into(), &"done".into())
    );
    assert_eq!(done["id"], 1);
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "phase" && e["state"] == "re_executing")
    );
}
