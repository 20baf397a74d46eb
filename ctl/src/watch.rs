//! `watch`: follow the stack's events as they happen.

use std::time::Duration;

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use serde_json::json;
use tokio::time::Instant;
use tonic::Streaming;

use securely_core::event_text::line;

use crate::errors;
use crate::follow;
use crate::target::Target;

/// How long `watch` keeps trying to reach the re-executed supervisor after an exec.
const RESUME_WINDOW: Duration = Duration::from_secs(60);
/// Pause between attempts to reach it.
const RESUME_PAUSE: Duration = Duration::from_millis(100);

/// Prints one line per event (a JSON object with `json`) until Ctrl-C or the supervisor
/// stops. A reload's exec ends one stream: the next, on the re-executed supervisor, goes
/// on after the last event printed.
pub async fn watch(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await?);
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .map_err(|s| errors::rpc("supervisor", s))?
        .into_inner();
    loop {
        let mut last: Option<Event> = None;
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match next.map_err(|s| errors::rpc("supervisor", s))? {
                Some(event) => {
                    if as_json {
                        println!("{}", to_json(&event));
                    } else {
                        println!("{}", line(&event));
                    }
                    last = Some(event);
                }
                None => break,
            }
        }
        let Some(last) = last.filter(|e| e.kind == "phase" && e.state == "re_executing") else {
            return Ok(());
        };
        stream = tokio::select! {
            resumed = resume(target, last.seq) => resumed?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
    }
}

/// A Watch on the re-executed supervisor after event `after_seq`.
async fn resume(target: &Target, after_seq: u64) -> anyhow::Result<Streaming<Event>> {
    let give_up = Instant::now() + RESUME_WINDOW;
    loop {
        if let Some(stream) = follow::open(target, after_seq).await {
            return Ok(stream);
        }
        if Instant::now() >= give_up {
            anyhow::bail!("the supervisor did not come back within {RESUME_WINDOW:?} of its exec");
        }
        tokio::time::sleep(RESUME_PAUSE).await;
    }
}

pub(crate) fn to_json(event: &Event) -> serde_json::Value {
    let mut value = json!({
        "seq": event.seq,
        "unix_ms": event.unix_ms,
        "kind": event.kind,
        "state": event.state,
    });
    let extra = [
        (
            "daemon",
            (!event.daemon.is_empty()).then(|| json!(event.daemon)),
        ),
        ("pid", (event.pid != 0).then(|| json!(event.pid))),
        (
            "detail",
            (!event.detail.is_empty()).then(|| json!(event.detail)),
        ),
        ("id", (event.id != 0).then(|| json!(event.id))),
        (
            "next_start_unix_ms",
            (event.next_start_unix_ms != 0).then(|| json!(event.next_start_unix_ms)),
        ),
        ("missed", (event.missed != 0).then(|| json!(event.missed))),
    ];
    for (key, field) in extra {
        if let Some(field) = field {
            value[key] = field;
        }
    }
    value
}
