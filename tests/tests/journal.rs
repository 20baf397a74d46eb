//! The stack's events reach a real systemd-journald with their own fields, so that
//! `journalctl -t securely SECURELY_EVENT=restart` finds them.
//!
//! journald runs in a private mount namespace (tmpfs over /run and /var/log/journal, so
//! nothing of the machine's own journal is touched), and the supervisor is started in it
//! through `nsenter`, its stderr announced as the journal stream (`JOURNAL_STREAM`), as
//! systemd would. Needs root, `unshare`, `nsenter`, `journalctl` and systemd-journald; a
//! machine without them reports why and leaves the test out, unless
//! `SECURELY_TEST_JOURNALD` is set, which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use securely_tests::{Stack, StackConfig, wait_for};
use serde_json::Value;

/// How long journald may take to start, and records to show up in it.
const WITHIN: Duration = Duration::from_secs(20);

const JOURNALD: [&str; 2] = [
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];

/// Mounts the private /run and journal directory, then becomes journald.
const NAMESPACE: &str = "mount -t tmpfs tmpfs /run && \
    if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi && \
    mkdir -p /run/systemd/journal /run/log/journal && exec \"$0\"";

/// Announces the supervisor's stderr as the journal stream, as systemd does.
const ANNOUNCE_STREAM: &str =
    "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && exec \"$0\" \"$@\"";

/// A systemd-journald in its own mount namespace, stopped when dropped.
struct Journald {
    process: Child,
}

impl Journald {
    /// Starts it, or says why it cannot run here.
    fn start() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (mount namespaces need it)".into());
        }
        let journald = JOURNALD
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or("no systemd-journald")?;
        for tool in ["unshare", "nsenter", "journalctl", "stat"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!("no {tool}"));
            }
        }
        let process = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(NAMESPACE)
            .arg(journald)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let journald = Self { process };
        let socket = journald.root().join("run/systemd/journal/socket");
        for _ in 0..WITHIN.as_millis() / 20 {
            if socket.exists() {
                return Ok(journald);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("journald did not open its socket (no mount namespaces here?)".into())
    }

    /// Its view of the file system.
    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.process.id()))
    }

    /// The command that starts a program in its namespace, logging to it.
    fn launcher(&self) -> Vec<String> {
        let pid = self.process.id().to_string();
        [
            "nsenter",
            "-t",
            &pid,
            "-m",
            "--",
            "sh",
            "-c",
            ANNOUNCE_STREAM,
        ]
        .map(String::from)
        .into()
    }

    /// The records `journalctl MATCHES` shows, as JSON.
    fn records(&self, matches: &[&str]) -> Vec<Value> {
        let out = Command::new("nsenter")
            .args(["-t", &self.process.id().to_string(), "-m", "--"])
            .args(["journalctl", "--no-pager", "-o", "json"])
            .args(matches)
            .output()
            .expect("run journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journalctl -o json prints JSON lines"))
            .collect()
    }

    /// Waits until `journalctl MATCHES` shows a record `last` matches; returns them all.
    fn until(&self, matches: &[&str], last: impl Fn(&Value) -> bool) -> Vec<Value> {
        wait_for(&format!("journalctl {matches:?}"), WITHIN, || {
            let records = self.records(matches);
            records.iter().any(&last).then_some(records)
        })
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn field<'a>(record: &'a Value, name: &str) -> &'a str {
    record[name].as_str().unwrap_or("")
}

fn number(record: &Value, name: &str) -> u64 {
    field(record, name).parse().unwrap_or(0)
}

#[test]
fn events_reach_the_journal_with_their_fields() {
    let journald = match Journald::start() {
        Ok(journald) => journald,
        Err(why) if std::env::var_os("SECURELY_TEST_JOURNALD").is_none() => {
            eprintln!("not run: {why}");
            return;
        }
        Err(why) => panic!("SECURELY_TEST_JOURNALD is set, but: {why}"),
    };
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        launcher: journald.launcher(),
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    let supervisor = stack.supervisor_pid().to_string();

    // A restart: `journalctl -t securely SECURELY_EVENT=restart`.
    let old = stack.ready_pid("dnsd").unwrap();
    stack.ctl_ok(&["restart", "dnsd", "--quiet"]);
    let new = stack.ready_pid("dnsd").unwrap();
    let restarts = journald.until(&["-t", "securely", "SECURELY_EVENT=restart"], |r| {
        field(r, "SECURELY_STATE") == "done"
    });
    assert_eq!(restarts.len(), 2, "{restarts:#?}");
    let (running, done) = (&restarts[0], &restarts[1]);
    for record in [running, done] {
        assert_eq!(field(record, "SECURELY_DAEMON"), "dnsd", "{record:#}");
        assert_eq!(field(record, "SECURELY_RESTART_ID"), "1", "{record:#}");
        assert_eq!(field(record, "_PID"), supervisor, "{record:#}");
        assert!(record.get("SECURELY_UPGRADE_ID").is_none(), "{record:#}");
    }
    assert_eq!(field(running, "SECURELY_STATE"), "running");
    assert_eq!(field(done, "SECURELY_PID"), new.to_string());
    assert!(number(running, "SECURELY_SEQ") < number(done, "SECURELY_SEQ"));
    assert_eq!(
        field(done, "MESSAGE"),
        format!(
            "#{} dnsd restart done pid={new} id=1 (replaced {old})",
            number(done, "SECURELY_SEQ")
        )
    );
    // The daemon's own phases, as the supervisor read them.
    let phases = journald.until(
        &[
            "-t",
            "securely",
            "SECURELY_EVENT=daemon_phase",
            "SECURELY_DAEMON=dnsd",
        ],
        |r| field(r, "SECURELY_STATE") == "stopped",
    );
    let states: Vec<&str> = phases.iter().map(|r| field(r, "SECURELY_STATE")).collect();
    assert!(
        states.ends_with(&["stopping", "drained", "stopped"]),
        "{states:?}"
    );
    // The daemons' own records are no events.
    let dnsd = journald.records(&["-t", "securely-dnsd"]);
    assert!(!dnsd.is_empty());
    assert!(dnsd.iter().all(|r| r.get("SECURELY_EVENT").is_none()));

    // An upgrade, across the exec: every event while it runs names it.
    stack.install_binaries();
    stack.ctl_ok(&["reload", "--quiet"]);
    let upgrade = journald.until(&["-t", "securely", "SECURELY_UPGRADE_ID=1"], |r| {
        field(r, "SECURELY_EVENT") == "upgrade" && field(r, "SECURELY_STATE") == "done"
    });
    let seqs: Vec<u64> = upgrade.iter().map(|r| number(r, "SECURELY_SEQ")).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let named = |event: &str, state: &str| {
        upgrade
            .iter()
            .any(|r| field(r, "SECURELY_EVENT") == event && field(r, "SECURELY_STATE") == state)
    };
    for (event, state) in [
        ("upgrade", "running"),
        ("phase", "re_executing"),
        ("phase", "upgrading"),
        ("daemon_phase", "opening"),
        ("daemon", "ready"),
        ("upgrade", "done"),
    ] {
        assert!(named(event, state), "no {event} {state}: {upgrade:#?}");
    }
    assert!(upgrade.iter().all(|r| field(r, "_PID") == supervisor));
}
