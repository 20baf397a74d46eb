//! `Supervisor.Watch` across an in-place upgrade: the old image's stream ends cleanly
//! after its `re_executing` event, and a Watch on the new image with `after_seq` goes on
//! with the very next numbers, up to the upgrade's end.

use std::process::Command;
use std::time::Duration;

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use securely_tests::{Stack, StackConfig, bin};

/// A bound on each awaited event, not a speed goal.
const WITHIN: Duration = Duration::from_secs(20);
/// How long to wait before watching again while the supervisor is between its images.
const RETRY: Duration = Duration::from_millis(50);

/// The next message of `stream`: `Ok(None)` at its clean end.
async fn next(stream: &mut tonic::Streaming<Event>) -> Result<Option<Event>, tonic::Status> {
    tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("an event or the end within the bound")
}

fn is(event: &Event, kind: &str, state: &str) -> bool {
    event.kind == kind && event.state == state
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_continues_across_a_reload_with_the_next_numbers() {
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    let supervisor = stack.supervisor_pid();
    let mut client = SupervisorClient::new(stack.channel("control").await);
    let mut old = client
        .watch(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // The current state: the phase, then one snapshot per daemon.
    let mut start = Vec::new();
    for _ in 0..4 {
        start.push(next(&mut old).await.expect("no error").expect("state"));
    }
    assert!(is(&start[0], "phase", "running"), "{start:?}");
    assert!(start.iter().all(|e| e.seq == start[0].seq), "{start:?}");

    stack.install_binaries();
    let mut ctl = Command::new(bin("securelyctl"));
    ctl.arg("--socket")
        .arg(stack.control_socket())
        .args(["reload", "--quiet"]);
    let reload = tokio::task::spawn_blocking(move || ctl.output().expect("run securelyctl"));

    // The old image's stream: every event numbered one more than the last, ending
    // cleanly (not with an error) right after its "re_executing".
    let mut seen: Vec<Event> = Vec::new();
    loop {
        match next(&mut old).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => break,
            Err(status) => panic!("the stream broke instead of ending: {status}; {seen:#?}"),
        }
    }
    let last = seen.last().expect("events before the exec").clone();
    assert!(is(&last, "phase", "re_executing"), "{seen:#?}");
    assert_eq!(last.pid, supervisor);
    assert!(
        seen.iter()
            .any(|e| is(e, "upgrade", "running") && e.id == 1)
    );
    let old_count = seen.len();

    // The new image: after the last number seen, the next ones, up to the upgrade's end.
    let done = 'watch: loop {
        let stream = match SupervisorClient::new(stack.channel("control").await)
            .watch(WatchRequest {
                after_seq: seen.last().unwrap().seq,
            })
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut stream = stream;
        while let Ok(Some(event)) = next(&mut stream).await {
            let end = event.kind == "upgrade" && event.state != "running";
            seen.push(event);
            if end {
                break 'watch seen.last().unwrap().clone();
            }
        }
        tokio::time::sleep(RETRY).await;
    };
    assert_eq!(done.state, "done", "{seen:#?}");
    assert_eq!(done.id, 1);
    let resumed = &seen[old_count];
    assert!(is(resumed, "phase", "upgrading"), "{seen:#?}");
    assert_eq!(resumed.pid, supervisor, "the same process, re-executed");
    assert!(
        seen[old_count..]
            .iter()
            .any(|e| e.kind == "daemon" && e.daemon == "queued" && e.state == "ready"),
        "{seen:#?}"
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs[0], start[0].seq + 1, "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap and no repeat across the two streams: {seqs:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| e.kind == "snapshot" || e.kind == "lagged")
    );
    let out = reload.await.expect("reload ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("reloaded in "),
        "{out:?}"
    );
}

/// `securelyctl watch --json` goes on across a reload until the stack stops: its numbers
/// run on without a gap over the exec, and it ends with the stop.
#[test]
fn securelyctl_watch_follows_the_stack_across_a_reload_until_the_stop() {
    use securely_tests::watcher::{Watcher, is as is_json};

    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    stack.wait_all_ready();
    let mut watcher = Watcher::start(&stack);
    watcher.until("the phase", WITHIN, |e| is_json(e, "phase", "", "running"));
    stack.install_binaries();
    stack.ctl_ok(&["reload", "--quiet"]);
    watcher.until("re_executing", WITHIN, |e| {
        is_json(e, "phase", "", "re_executing")
    });
    // The re-executed supervisor's events come on the same output.
    watcher.until("the upgrade's end", WITHIN, |e| {
        is_json(e, "upgrade", "", "done")
    });
    stack.ctl_ok(&["stop"]);
    watcher.until("terminated", WITHIN, |e| {
        is_json(e, "phase", "", "terminated")
    });
    assert!(watcher.ended_ok(WITHIN), "watch ends with the stack");
    let seqs: Vec<u64> = watcher
        .seen
        .iter()
        .skip_while(|e| e["kind"] == "snapshot" || is_json(e, "phase", "", "running"))
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbers skip or repeat: {seqs:?}"
    );
}
