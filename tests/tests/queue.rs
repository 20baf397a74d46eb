//! queued through the supervisor: durable jobs across SIGKILL, timeouts, failures.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use securely_tests::Stack;

#[test]
fn a_pushed_job_survives_sigkill_and_the_restart() {
    let stack = Stack::start();
    let id = stack
        .ctl_ok(&["queue:push", "emails", "send welcome"])
        .trim()
        .to_string();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    let old = stack.ready_pid("queued").unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    stack.wait_replaced("queued", old, Duration::from_secs(5));
    let got = stack.ctl_ok(&["queue:reserve", "emails"]);
    assert_eq!(got.trim(), format!("{id} send welcome"));
    stack.ctl_ok(&["queue:ack", &id]);
    // Now empty: non-zero exit.
    let empty = stack.ctl(&["queue:reserve", "emails"]);
    assert!(!empty.status.success());
}

#[test]
fn an_unacknowledged_job_comes_back_after_its_timeout() {
    let stack = Stack::start();
    let id = stack
        .ctl_ok(&["queue:push", "work", "job-1"])
        .trim()
        .to_string();
    let reserved_at = std::time::Instant::now();
    let first = stack.ctl_ok(&["queue:reserve", "work", "--timeout", "3"]);
    assert!(first.starts_with(&id));
    // Reserved: not handed out again meanwhile.
    assert!(!stack.ctl(&["queue:reserve", "work"]).status.success());
    // Back after the timeout (wait for it rather than sleep).
    let again = stack.ctl_ok(&["queue:reserve", "work", "--wait", "15"]);
    assert!(reserved_at.elapsed() >= std::time::Duration::from_secs(3));
    assert_eq!(again.trim(), format!("{id} job-1"));
    // The first worker, late, cannot ack the job from under the second.
    let late = stack.ctl(&["queue:ack", &id, "--attempt", "1"]);
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));
    stack.ctl_ok(&["queue:ack", &id, "--attempt", "2"]);
}

#[test]
fn failing_the_last_try_lands_in_failed() {
    let stack = Stack::start();
    let id = stack
        .ctl_ok(&["queue:push", "reports", "monthly", "--tries", "2"])
        .trim()
        .to_string();
    stack.ctl_ok(&["queue:reserve", "reports"]);
    let out = stack.ctl_ok(&["queue:fail", &id, "--error", "disk full"]);
    assert!(out.contains("retried"), "{out}");
    // The retry comes after its backoff (1 s by default).
    stack.ctl_ok(&["queue:reserve", "reports", "--wait", "15"]);
    let out = stack.ctl_ok(&["queue:fail", &id, "--error", "disk still full"]);
    assert!(out.contains("failed list"), "{out}");
    let failed: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["queue:failed", "--json"])).unwrap();
    assert_eq!(failed[0]["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(failed[0]["error"], "disk still full");
    assert_eq!(failed[0]["attempts"], 2);
    let stats: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["queue:stats", "--json"])).unwrap();
    let reports = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "reports")
        .unwrap();
    assert_eq!(reports["failed"], 1);
    assert_eq!(reports["ready"], 0);
}

#[test]
fn an_acknowledged_job_stays_acknowledged_after_sigkill() {
    let stack = Stack::start();
    let id = stack
        .ctl_ok(&["queue:push", "once", "x"])
        .trim()
        .to_string();
    stack.ctl_ok(&["queue:reserve", "once"]);
    stack.ctl_ok(&["queue:ack", &id]);
    let old = stack.ready_pid("queued").unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    stack.wait_replaced("queued", old, Duration::from_secs(5));
    assert!(!stack.ctl(&["queue:reserve", "once"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reservers_get_distinct_jobs() {
    use securely_proto::queue::queue_client::QueueClient;
    use securely_proto::queue::{AckRequest, PushRequest, ReserveRequest};

    const JOBS: usize = 60;
    const WORKERS: usize = 6;
    let stack = Stack::start();
    let mut producer = QueueClient::new(stack.channel("queued").await);
    let mut pushed = std::collections::BTreeSet::new();
    for i in 0..JOBS {
        let request = PushRequest {
            queue: "shared".into(),
            payload: i.to_string().into_bytes(),
            delay_seconds: 0,
            max_tries: 0,
            ..Default::default()
        };
        pushed.insert(producer.push(request).await.unwrap().into_inner().id);
    }
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let mut client = QueueClient::new(stack.channel("queued").await);
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let request = ReserveRequest {
                    queue: "shared".into(),
                    timeout_seconds: 60,
                    wait_seconds: 0,
                    ..Default::default()
                };
                let Ok(job) = client.reserve(request).await else {
                    return got;
                };
                let job = job.into_inner();
                let ack = AckRequest {
                    id: job.id,
                    attempt: job.attempt,
                };
                client.ack(ack).await.unwrap();
                got.push(job.id);
            }
        }));
    }
    let mut handed_out = Vec::new();
    for worker in workers {
        handed_out.extend(worker.await.unwrap());
    }
    let distinct: std::collections::BTreeSet<u64> = handed_out.iter().copied().collect();
    assert_eq!(handed_out.len(), JOBS, "each job handed out exactly once");
    assert_eq!(distinct, pushed);
}

#[test]
fn failed_jobs_are_retried_forgotten_and_flushed() {
    let stack = Stack::start();
    let mut ids = Vec::new();
    for payload in ["a", "b", "c"] {
        let id = stack.ctl_ok(&["queue:push", "mail", payload, "--tries", "1"]);
        let id = id.trim().to_string();
        stack.ctl_ok(&["queue:reserve", "mail"]);
        stack.ctl_ok(&["queue:fail", &id, "--error", "smtp down"]);
        ids.push(id);
    }
    let failed = |stack: &Stack| -> usize {
        let list: serde_json::Value =
            serde_json::from_str(&stack.ctl_ok(&["queue:failed", "--json"])).unwrap();
        list.as_array().unwrap().len()
    };
    assert_eq!(failed(&stack), 3);

    // Retry one: back on its queue with its payload, from attempt zero.
    let out = stack.ctl_ok(&["queue:retry", &ids[0]]);
    assert!(out.contains("1 failed job(s) retried"), "{out}");
    let again = stack.ctl_ok(&["queue:reserve", "mail"]);
    assert_eq!(again.trim(), format!("{} a", ids[0]));
    stack.ctl_ok(&["queue:ack", &ids[0], "--attempt", "1"]);
    assert_eq!(failed(&stack), 2);

    // Forget one; an id not in the list is named and fails the command.
    stack.ctl_ok(&["queue:forget", &ids[1]]);
    let missing = stack.ctl(&["queue:forget", &ids[1]]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&ids[1]));
    assert_eq!(failed(&stack), 1);

    // Flush the rest; the payloads are gone with them.
    let out = stack.ctl_ok(&["queue:flush"]);
    assert!(out.contains("1 failed job(s) forgotten"), "{out}");
    assert_eq!(failed(&stack), 0);
    let bad = stack.ctl(&["queue:retry", "soon"]);
    assert!(!bad.status.success());
}

#[test]
fn a_worker_touches_a_long_job_and_releases_it_through_securelyctl() {
    let stack = Stack::start();
    let id = stack
        .ctl_ok(&["queue:push", "video", "encode"])
        .trim()
        .to_string();
    stack.ctl_ok(&["queue:reserve", "video", "--timeout", "2"]);
    let touched = stack.ctl_ok(&["queue:touch", &id, "--timeout", "60", "--attempt", "1"]);
    assert!(touched.contains("reserved until"), "{touched}");
    // Past the first timeout the job is still held by its worker.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(!stack.ctl(&["queue:reserve", "video"]).status.success());
    let released = stack.ctl_ok(&["queue:release", &id, "--delay", "1"]);
    assert!(released.contains("released"), "{released}");
    let again = stack.ctl_ok(&["queue:reserve", "video", "--wait", "10"]);
    assert_eq!(again.trim(), format!("{id} encode"));
    // Not reserved any more once acknowledged: a clear error, non-zero exit.
    stack.ctl_ok(&["queue:ack", &id]);
    let gone = stack.ctl(&["queue:touch", &id]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not reserved"));
}

#[test]
fn securelyctl_reserves_from_queues_in_the_order_given() {
    let stack = Stack::start();
    let low = stack.ctl_ok(&["queue:push", "default", "later"]);
    let high = stack.ctl_ok(&["queue:push", "high", "first"]);
    let got = stack.ctl_ok(&["queue:reserve", "high,default"]);
    assert_eq!(got.trim(), format!("{} first", high.trim()));
    let got = stack.ctl_ok(&["queue:reserve", "high,default"]);
    assert_eq!(got.trim(), format!("{} later", low.trim()));
    let twice = stack.ctl(&["queue:reserve", "high,high"]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("named twice"));
}

#[test]
fn securelyctl_pushes_a_job_for_a_time() {
    let stack = Stack::start();
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let id = stack.ctl_ok(&["queue:push", "timed", "x", "--at", &at]);
    assert!(!stack.ctl(&["queue:reserve", "timed"]).status.success());
    let got = stack.ctl_ok(&["queue:reserve", "timed", "--wait", "10"]);
    assert_eq!(got.trim(), format!("{} x", id.trim()));
    let bad = stack.ctl(&["queue:push", "timed", "x", "--at", "tomorrow"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}
