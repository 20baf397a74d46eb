//! Restarts of proxyd in front of a slow development server: HTTP/1.0, a connection per
//! request, a small listen backlog, answers that take up to longer than the window a
//! draining proxyd gives kept-alive connections. Under wrk-like keep-alive load (which
//! never resends a request), every request the old instance accepted is answered by it.

use std::time::Duration;

use securely_tests::devserver::{self, DevServer};
use securely_tests::keepalive::KeepAliveLoad;
use securely_tests::{Stack, StackConfig, alive, wait_for};

/// Client connections, as in `wrk -c16`.
const CONNECTIONS: usize = 16;
/// Hand-overs under load.
const RESTARTS: usize = 3;
/// Load between two restarts, so the requests in flight at each stop are a mix of quick
/// and slow ones.
const BETWEEN_RESTARTS: Duration = Duration::from_millis(700);
/// How long an old instance may take to drain: its slowest request, plus proxyd's window
/// for kept-alive connections, plus room for a loaded machine.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn restarts_in_front_of_a_slow_backend_answer_every_request() {
    let stack = Stack::start_with(StackConfig::default());
    let backend = DevServer::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    let load = KeepAliveLoad::start(stack.http, "app.test", CONNECTIONS);
    wait_for("load to flow", Duration::from_secs(10), || {
        (load.ok() >= CONNECTIONS as u64).then_some(())
    });

    let mut old = Vec::new();
    for _ in 0..RESTARTS {
        tokio::time::sleep(BETWEEN_RESTARTS).await;
        old.push(stack.ready_pid("proxyd").expect("proxyd serves"));
        let out = stack.ctl_ok(&["restart", "proxyd"]);
        assert!(out.contains("restarted"), "{out}");
    }
    // The load goes on until every old instance has drained and gone.
    for pid in old {
        wait_for("an old proxyd to drain", DRAIN_DEADLINE, || {
            (!alive(pid)).then_some(())
        });
    }
    let report = load.finish().await;
    println!("{report:#?}; backend answered {}", backend.answered());
    if !report.failures.is_empty() {
        println!("--- the stack's log ---\n{}", stack.log());
    }
    assert!(
        report.failures.is_empty(),
        "requests lost across the restarts: {:#?}",
        report.failures
    );
    assert!(report.ok > CONNECTIONS as u64 * 2, "{report:?}");
    assert!(
        report.closed_after_answer >= RESTARTS as u64,
        "each drain closed connections after answering: {report:?}"
    );
    // The drains had slow responses to deliver after their window.
    assert!(report.slowest >= devserver::SLOW, "{report:?}");
}
