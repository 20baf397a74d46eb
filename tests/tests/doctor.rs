//! `securelyctl doctor` against a real stack: dnsd answers, and the machine's resolver
//! (which knows nothing of the test stack's port) does not send the TLD there, so the
//! doctor says so and names a fix.

use securely_tests::Stack;

#[test]
fn doctor_reports_dnsd_and_names_the_fix_when_the_tld_is_not_routed() {
    let stack = Stack::start();
    let out = stack.ctl(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("dnsd     answers securely-doctor.test with 127.0.0.1"),
        "{stdout}{stderr}"
    );
    for daemon in ["proxyd", "dnsd", "queued"] {
        assert!(stdout.contains(&format!("{daemon:<8} ready")), "{stdout}");
    }
    // The test stack's dnsd listens on a free port no system resolver knows.
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("not routed") && stdout.contains("fix: "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&stack.dns.to_string()),
        "the fix names dnsd's address: {stdout}"
    );
    assert!(stderr.contains("does not send .test to dnsd"), "{stderr}");
}
