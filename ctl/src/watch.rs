//! `watch`: follow the stack's events as they happen.

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use serde_json::json;

use crate::errors;
use crate::target::Target;

/// Prints one line per event (a JSON object with `json`) until Ctrl-C or the stream ends.
pub async fn watch(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await?);
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .map_err(|s| errors::rpc("supervisor", s))?
        .into_inner();
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match next.map_err(|s| errors::rpc("supervisor", s))? {
            Some(event) if as_json => println!("{}", to_json(&event)),
            Some(event) => println!("{}", line(&event)),
            None => return Ok(()),
        }
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

/// `#12 dnsd daemon exited pid=41 (killed by SIGKILL)`.
pub(crate) fn line(event: &Event) -> String {
    let who = if event.daemon.is_empty() {
        "supervisor"
    } else {
        &event.daemon
    };
    let mut line = format!("#{} {who} {} {}", event.seq, event.kind, event.state);
    if event.pid != 0 {
        line += &format!(" pid={}", event.pid);
    }
    if event.id != 0 {
        line += &format!(" id={}", event.id);
    }
    if event.next_start_unix_ms != 0 {
        let wait = event.next_start_unix_ms.saturating_sub(event.unix_ms);
        line += &format!(" next_start_in={wait}ms");
    }
    if event.missed != 0 {
        line += &format!(" missed={}", event.missed);
    }
    if !event.detail.is_empty() {
        line += &format!(" ({})", event.detail);
    }
    line
}
