//! `securelyctl restart` and `reload` print their own operation's events as they happen
//! (in `securelyctl watch`'s plain format), then today's result line; `--quiet` only the
//! result.

use securely_tests::{Stack, StackConfig};

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

#[test]
fn reload_prints_the_upgrades_events_then_its_result() {
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
    assert_eq!(lines.len(), exec + 2, "{out}");
    assert!(lines[exec + 1].starts_with("reloaded in "), "{out}");

    stack.install_binaries();
    let out = stack.ctl_ok(&["reload", "--quiet"]);
    assert!(
        out.starts_with("reloaded in ") && out.lines().count() == 1,
        "{out}"
    );
}
