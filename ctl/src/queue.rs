//! `queue:*`: queued's jobs.

use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{
    AckRequest, FailRequest, FailedChanged, ListFailedRequest, PushRequest, ReleaseRequest,
    ReserveRequest, SelectFailed, StatsRequest, TouchRequest,
};
use std::time::Duration;

use serde_json::json;

use crate::errors;
use crate::output;
use crate::target::Target;

async fn client(target: &Target) -> anyhow::Result<QueueClient<tonic::transport::Channel>> {
    client_waiting(target, 0).await
}

/// A client whose calls may also wait `wait_seconds` for a job.
async fn client_waiting(
    target: &Target,
    wait_seconds: u64,
) -> anyhow::Result<QueueClient<tonic::transport::Channel>> {
    let extra = Duration::from_secs(wait_seconds.min(MAX_WAIT_SECONDS));
    Ok(QueueClient::new(target.daemon("queued", extra).await?))
}

/// The longest wait queued grants (it refuses longer ones with a clear error).
const MAX_WAIT_SECONDS: u64 = 3600;

/// When a pushed job becomes available: after a delay, or at a time (Unix ms; 0: none).
#[derive(Debug, Clone, Copy)]
pub struct When {
    pub delay_seconds: u64,
    pub available_at_ms: u64,
}

/// Parses an RFC 3339 time as Unix milliseconds (a time before 1970 is refused).
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-12-24T18:00:00+01:00"))?;
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| "a time before 1970".to_string())
}

pub async fn push(
    target: &Target,
    queue: String,
    payload: String,
    when: When,
    max_tries: u32,
) -> anyhow::Result<()> {
    let reply = client(target)
        .await?
        .push(PushRequest {
            queue,
            payload: payload.into_bytes(),
            delay_seconds: when.delay_seconds,
            max_tries,
            available_at_ms: when.available_at_ms,
        })
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner();
    println!("{}", reply.id);
    Ok(())
}

pub async fn reserve(
    target: &Target,
    queue: String,
    timeout_seconds: u64,
    wait_seconds: u64,
) -> anyhow::Result<()> {
    let job = client_waiting(target, wait_seconds)
        .await?
        .reserve(reserve_request(queue, timeout_seconds, wait_seconds))
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner();
    println!("{} {}", job.id, String::from_utf8_lossy(&job.payload));
    Ok(())
}

/// A Reserve of `queue`, or of several queues in priority order when it is a comma-separated
/// list (`high,default`, as Laravel's `--queue`).
fn reserve_request(queue: String, timeout_seconds: u64, wait_seconds: u64) -> ReserveRequest {
    let (queue, queues) = if queue.contains(',') {
        (
            String::new(),
            queue.split(',').map(str::to_string).collect(),
        )
    } else {
        (queue, Vec::new())
    };
    ReserveRequest {
        queue,
        timeout_seconds,
        wait_seconds,
        queues,
    }
}

pub async fn ack(target: &Target, id: u64, attempt: u32) -> anyhow::Result<()> {
    client(target)
        .await?
        .ack(AckRequest { id, attempt })
        .await
        .map_err(|s| errors::rpc("queued", s))?;
    println!("{id} acknowledged");
    Ok(())
}

pub async fn fail(target: &Target, id: u64, error: String, attempt: u32) -> anyhow::Result<()> {
    let reply = client(target)
        .await?
        .fail(FailRequest { id, error, attempt })
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner();
    if reply.will_retry {
        println!("{id} will be retried at {} (unix ms)", reply.retry_at_ms);
    } else {
        println!("{id} moved to the failed list");
    }
    Ok(())
}

pub async fn release(
    target: &Target,
    id: u64,
    delay_seconds: u64,
    attempt: u32,
) -> anyhow::Result<()> {
    let reply = client(target)
        .await?
        .release(ReleaseRequest {
            id,
            attempt,
            delay_seconds,
        })
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner();
    println!(
        "{id} released; available at {} (unix ms)",
        reply.available_at_ms
    );
    Ok(())
}

pub async fn touch(
    target: &Target,
    id: u64,
    timeout_seconds: u64,
    attempt: u32,
) -> anyhow::Result<()> {
    let reply = client(target)
        .await?
        .touch(TouchRequest {
            id,
            attempt,
            timeout_seconds,
        })
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner();
    println!("{id} reserved until {} (unix ms)", reply.reserved_until_ms);
    Ok(())
}

pub async fn failed(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let jobs = client(target)
        .await?
        .list_failed(ListFailedRequest::default())
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner()
        .jobs;
    if as_json {
        let jobs: Vec<_> = jobs
            .iter()
            .map(|j| {
                json!({
                    "id": j.id, "queue": j.queue,
                    "payload": String::from_utf8_lossy(&j.payload),
                    "attempts": j.attempts, "error": j.error, "failed_at_ms": j.failed_at_ms,
                })
            })
            .collect();
        output::json(&json!(jobs));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .into_iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.queue,
                j.attempts.to_string(),
                j.error,
                String::from_utf8_lossy(&j.payload).into_owned(),
            ]
        })
        .collect();
    output::table(&["ID", "QUEUE", "ATTEMPTS", "ERROR", "PAYLOAD"], &rows);
    Ok(())
}

/// `queue:retry ID... | all`.
pub async fn retry(
    target: &Target,
    jobs: Vec<String>,
    queue: Option<String>,
) -> anyhow::Result<()> {
    let all = jobs.len() == 1 && jobs[0] == "all";
    if !all && queue.is_some() {
        anyhow::bail!("--queue goes with `all`, not with job ids");
    }
    let ids = if all {
        Vec::new()
    } else {
        jobs.iter()
            .map(|id| {
                id.parse::<u64>()
                    .map_err(|_| anyhow::anyhow!("{id:?} is neither a job id nor `all`"))
            })
            .collect::<anyhow::Result<Vec<u64>>>()?
    };
    change_failed(target, FailedOp::Retry, ids, all, queue).await
}

/// `queue:forget ID...` and `queue:flush`.
pub async fn forget(
    target: &Target,
    ids: Vec<u64>,
    all: bool,
    queue: Option<String>,
) -> anyhow::Result<()> {
    change_failed(target, FailedOp::Forget, ids, all, queue).await
}

/// What to do with selected failed jobs.
#[derive(Debug, Clone, Copy)]
enum FailedOp {
    Retry,
    Forget,
}

async fn change_failed(
    target: &Target,
    op: FailedOp,
    ids: Vec<u64>,
    all: bool,
    queue: Option<String>,
) -> anyhow::Result<()> {
    let selection = SelectFailed {
        ids,
        all,
        queue: queue.unwrap_or_default(),
    };
    let mut client = client(target).await?;
    let (reply, verb) = match op {
        FailedOp::Retry => (client.retry_failed(selection).await, "retried"),
        FailedOp::Forget => (client.forget_failed(selection).await, "forgotten"),
    };
    let changed = reply.map_err(|s| errors::rpc("queued", s))?.into_inner();
    report_failed_change(verb, &changed)
}

/// Prints how many jobs changed; ids that were not failed make the command fail.
fn report_failed_change(verb: &str, changed: &FailedChanged) -> anyhow::Result<()> {
    println!("{} failed job(s) {verb}", changed.count);
    if !changed.missing.is_empty() {
        let missing: Vec<String> = changed.missing.iter().map(u64::to_string).collect();
        anyhow::bail!("not in the failed list: {}", missing.join(", "));
    }
    Ok(())
}

pub async fn stats(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let queues = client(target)
        .await?
        .stats(StatsRequest {})
        .await
        .map_err(|s| errors::rpc("queued", s))?
        .into_inner()
        .queues;
    if as_json {
        let queues: Vec<_> = queues
            .iter()
            .map(|q| {
                json!({
                    "queue": q.queue, "ready": q.ready, "delayed": q.delayed,
                    "reserved": q.reserved, "failed": q.failed, "pushed_total": q.pushed_total,
                })
            })
            .collect();
        output::json(&json!(queues));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = queues
        .into_iter()
        .map(|q| {
            vec![
                q.queue,
                q.ready.to_string(),
                q.delayed.to_string(),
                q.reserved.to_string(),
                q.failed.to_string(),
                q.pushed_total.to_string(),
            ]
        })
        .collect();
    output::table(
        &["QUEUE", "READY", "DELAYED", "RESERVED", "FAILED", "PUSHED"],
        &rows,
    );
    Ok(())
}
