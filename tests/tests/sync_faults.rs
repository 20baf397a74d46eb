//! Under the supervisor: a daemon whose disk sync fails acknowledges nothing, exits with
//! status 74 (EX_IOERR) and is restarted from what the disk holds, with every change it
//! acknowledged before.

use std::path::Path;
use std::time::Duration;

use securely_tests::{Stack, StackConfig, wait_for};

/// The debug-build fault hook's variable (`securely_core::durable::fault`): a file whose
/// `fail` fails every sync.
const SYNC_FAULT_ENV: &str = "SECURELY_TEST_SYNC_FAULT";
/// How the supervisor reports a daemon's exit after a failed commit.
const EXITED: &str = "exited with status 74";
/// How long the supervisor may take to bring the daemon back.
const RESTART_DEADLINE: Duration = Duration::from_secs(20);

/// A stack whose daemons' syncs obey the fault file `sync-fault` in the returned dir
/// (absent at first: no fault).
fn stack() -> (Stack, tempfile::TempDir) {
    let faults = tempfile::tempdir().unwrap();
    let fault = faults.path().join("sync-fault");
    let config = StackConfig {
        env: vec![(SYNC_FAULT_ENV.into(), fault.display().to_string())],
        ..StackConfig::default()
    };
    (Stack::start_with(config), faults)
}

/// Fails the next syncs while `change` (a securelyctl command line) runs, checks it is
/// refused, and waits until the supervisor has restarted `daemon` after its exit 74.
fn fail_once(stack: &Stack, faults: &Path, daemon: &str, change: &[&str]) {
    let old = stack.ready_pid(daemon).expect("ready");
    let fault = faults.join("sync-fault");
    std::fs::write(&fault, "fail").unwrap();
    let out = stack.ctl(change);
    std::fs::remove_file(&fault).unwrap();
    assert!(
        !out.status.success(),
        "{change:?} was acknowledged though its sync failed"
    );
    wait_for(&format!("{daemon} {EXITED}"), RESTART_DEADLINE, || {
        stack.log().contains(EXITED).then_some(())
    });
    stack.wait_replaced(daemon, old, RESTART_DEADLINE);
}

#[test]
fn queued_restarts_with_the_acknowledged_jobs() {
    let (stack, faults) = stack();
    let kept = stack.ctl_ok(&["queue:push", "kept", "acknowledged"]);
    fail_once(
        &stack,
        faults.path(),
        "queued",
        &["queue:push", "q", "doomed"],
    );
    let got = stack.ctl_ok(&["queue:reserve", "kept"]);
    assert_eq!(got.trim(), format!("{} acknowledged", kept.trim()));
    // The doomed push was never acknowledged: wholly there or absent.
    let doomed = stack.ctl(&["queue:reserve", "q"]);
    if doomed.status.success() {
        assert!(String::from_utf8_lossy(&doomed.stdout).ends_with("doomed\n"));
    }
}

#[test]
fn proxyd_restarts_with_the_acknowledged_sites() {
    let (stack, faults) = stack();
    stack.ctl_ok(&["site:link", "kept", "127.0.0.1:3000"]);
    fail_once(
        &stack,
        faults.path(),
        "proxyd",
        &["site:link", "doomed", "127.0.0.1:3001"],
    );
    let sites = stack.ctl_ok(&["site:list"]);
    assert!(sites.contains("kept"), "{sites}");
}

#[test]
fn dnsd_restarts_with_the_acknowledged_records() {
    let (stack, faults) = stack();
    stack.ctl_ok(&["dns:set", "kept.test", "A", "10.0.0.7"]);
    fail_once(
        &stack,
        faults.path(),
        "dnsd",
        &["dns:set", "doomed.test", "A", "10.0.0.8"],
    );
    let records = stack.ctl_ok(&["dns:list"]);
    assert!(records.contains("kept.test"), "{records}");
}
