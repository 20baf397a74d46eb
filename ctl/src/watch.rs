//! `watch`: follow the stack's events as they happen.

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use serde_json::json;

use securely_core::event_text::line;

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
