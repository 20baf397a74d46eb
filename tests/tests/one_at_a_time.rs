//! One restart or upgrade at a time: a request while one runs is refused as busy at once
//! (a signal is ignored, with the reason logged), from the moment the running one is
//! accepted until its last hand-over, across the supervisor's exec.

use std::time::Duration;

use nix::sys::signal::Signal;
use securely_tests::{Stack, StackConfig, wait_for};

/// How long an upgrade may take in these tests.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(60);

fn own_binaries() -> Stack {
    Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    })
}

/// Asserts that `args` were refused as busy because `running` runs.
fn assert_busy(stack: &Stack, args: &[&str], running: &str) {
    let out = stack.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} ran alongside {running}");
    assert!(
        err.contains("unavailable: busy") && err.contains(&format!("{running} is in progress")),
        "{args:?}: {err}"
    );
}

fn upgrade(stack: &Stack) -> serde_json::Value {
    stack.status().expect("status")["upgrade"].clone()
}

/// The id the next upgrade gets.
fn next_upgrade_id(stack: &Stack) -> u64 {
    upgrade(stack)["id"].as_u64().unwrap_or(0) + 1
}

#[test]
fn a_second_restart_or_reload_while_one_runs_is_busy() {
    let stack = own_binaries();
    // A queued binary that takes 2 s to start keeps the first restart running.
    stack.slow_binary("securely-queued", 2);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| stack.ctl(&["restart", "queued"]));
        std::thread::sleep(Duration::from_millis(500));
        assert_busy(&stack, &["restart", "dnsd"], "a restart of queued");
        assert_busy(&stack, &["reload"], "a restart of queued");
        let first = first.join().unwrap();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
    });
}

#[test]
fn a_reload_is_the_only_operation_from_its_check_to_its_last_hand_over() {
    let stack = own_binaries();
    // queued's new binary takes 2 s to answer the check and 2 s to start: the reload is
    // in its check for 2 s in the first image, and hands queued over for 2 s in the next.
    stack.slow_binary("securely-queued", 2);
    let id = next_upgrade_id(&stack);
    std::thread::scope(|scope| {
        let reload = scope.spawn(|| stack.ctl(&["reload"]));
        // The check, before the exec.
        wait_for("the check to run", Duration::from_secs(10), || {
            (upgrade(&stack)["id"] == id).then_some(())
        });
        assert_busy(&stack, &["reload"], "an upgrade");
        assert_busy(&stack, &["restart", "dnsd"], "an upgrade");
        stack.signal_supervisor(Signal::SIGHUP);
        // The hand-overs, after the exec.
        wait_for("queued's hand-over", UPGRADE_DEADLINE, || {
            let detail = upgrade(&stack)["detail"].as_str()?.to_string();
            detail.contains("handing queued over").then_some(())
        });
        assert_busy(&stack, &["restart", "dnsd"], "an upgrade");
        assert_busy(&stack, &["reload"], "an upgrade");
        stack.signal_supervisor(Signal::SIGHUP);
        let reload = reload.join().unwrap();
        assert!(
            reload.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&reload.stderr),
            stack.log()
        );
    });
    // Neither SIGHUP started an upgrade of its own, then or later.
    std::thread::sleep(Duration::from_millis(500));
    let last = upgrade(&stack);
    assert!(last["id"] == id && last["state"] == "done", "{last}");
    let ignored = stack
        .log()
        .matches("SIGHUP ignored: busy: an upgrade is in progress")
        .count();
    assert_eq!(ignored, 2, "{}", stack.log());
}

#[test]
fn restarts_sent_throughout_a_reload_never_run_alongside_it() {
    let stack = own_binaries();
    stack.slow_binary("securely-queued", 1);
    let id = next_upgrade_id(&stack);
    let (reload, answers) = std::thread::scope(|scope| {
        let reload = scope.spawn(|| stack.ctl(&["reload"]));
        wait_for("the reload to start", Duration::from_secs(10), || {
            (upgrade(&stack)["id"] == id).then_some(())
        });
        // Restarts one after the other, before, during and after the exec: those sent
        // while the control socket changes hands wait in its backlog for the next image.
        let mut answers = Vec::new();
        while !reload.is_finished() {
            answers.push(stack.ctl(&["restart", "dnsd"]));
        }
        (reload.join().unwrap(), answers)
    });
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    // No restart began between the upgrade's check and its last hand-over: the log
    // (one file across the exec, in order) says when each began.
    let log = stack.log();
    let began = log
        .find("upgrade: checking the installed binaries")
        .expect("the upgrade's start is logged");
    let done = log
        .find("upgrade done")
        .expect("the upgrade's end is logged");
    assert!(
        !log[began..done].contains("restart requested"),
        "a restart ran during the reload:\n{log}"
    );
    let mut busy = 0;
    for out in &answers {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("restart of dnsd failed"), "{err}");
        busy += usize::from(err.contains("busy: an upgrade is in progress"));
    }
    println!("{} restarts sent, {busy} busy", answers.len());
    assert!(busy > 0, "no restart was sent while the reload ran");
}
