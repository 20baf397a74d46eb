//! A record is acknowledged only once it is on disk (flushed and fdatasync'd): a failing
//! disk sync, injected into the real daemon through the debug-build hook of
//! `securely_core::durable::fault`, leaves the record unacknowledged and unserved, and
//! dnsd exits for a restart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::rr::RecordType;
use securely_core::durable::EXIT_COMMIT_FAILED;

/// How long the injected sync takes before it fails.
const SLOW_SYNC: Duration = Duration::from_millis(1500);
/// How long a query may take while a writer's sync is pending: far below [`SLOW_SYNC`].
const PROMPT: Duration = Duration::from_millis(500);

fn names(dnsd: &Dnsd) -> Vec<String> {
    dnsd.list_records().into_iter().map(|r| r.name).collect()
}

#[test]
fn a_record_whose_sync_fails_is_never_acknowledged_nor_served() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let fault = dir.path().join("sync-fault");
    let config = DnsConfig {
        sync_fault: Some(fault.clone()),
        ..DnsConfig::default()
    };
    let mut dnsd = Dnsd::start_in(dir.clone(), config);
    dnsd.set_record("kept.test", "A", "10.0.0.1", 0)
        .expect("SetRecord");

    std::fs::write(&fault, format!("delay={} fail", SLOW_SYNC.as_millis())).unwrap();
    let set = std::thread::scope(|scope| {
        let setting = scope.spawn(|| dnsd.set_record("doomed.test", "A", "10.0.0.2", 0));
        std::thread::sleep(Duration::from_millis(300));
        // While its sync is pending the record is not served (the name is synthesised)
        // nor listed, and queries do not wait for the writer.
        let asked = Instant::now();
        let reply = udp(dnsd.addr, &query("doomed.test.", RecordType::A));
        assert_eq!(answers(&reply), vec!["127.0.0.1"]);
        assert_eq!(names(&dnsd), vec!["kept.test"]);
        assert!(asked.elapsed() < PROMPT, "a reader waited for the writer");
        setting.join().unwrap()
    });
    assert!(
        set.is_err(),
        "a record whose sync failed was acknowledged: {set:?}"
    );
    let (status, _) = dnsd.wait_exit();
    assert_eq!(status.code(), Some(EXIT_COMMIT_FAILED), "{}", dnsd.log());
    drop(dnsd);

    // Restarted on a healthy disk: the acknowledged record is served; the doomed one,
    // never acknowledged, is either wholly there or absent.
    std::fs::remove_file(&fault).unwrap();
    let dnsd = Dnsd::start_in(dir, DnsConfig::default());
    let listed = names(&dnsd);
    assert!(
        listed == ["kept.test"] || listed == ["doomed.test", "kept.test"],
        "{listed:?}"
    );
    let kept = udp(dnsd.addr, &query("kept.test.", RecordType::A));
    assert_eq!(answers(&kept), vec!["10.0.0.1"]);
}
