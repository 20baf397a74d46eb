//! `restart` and `reload` print their own operation's events as they happen: a Watch
//! stream is opened before the request, and the events that belong to the operation are
//! printed (in `watch`'s plain format, or its JSON lines) while the request runs. A reload
//! goes on after the supervisor's exec: a new Watch on the new image continues after the
//! last event seen, up to the upgrade's end.

use std::future::Future;
use std::time::Duration;

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use tokio::time::Instant;
use tonic::Streaming;

use crate::target::Target;
use crate::watch;

/// How long the events still in the stream are read once the request has answered (the
/// supervisor publishes an operation's end before it answers; this bounds a refusal that
/// published nothing).
const AFTER_REPLY: Duration = Duration::from_millis(500);
/// How long to wait before watching the new image again when a Watch could not be
/// opened or broke off (the supervisor is between its images).
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// How `restart` and `reload` print.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printing {
    /// Only the result, no events.
    pub quiet: bool,
    /// JSON lines (as `watch --json`) instead of plain lines.
    pub json: bool,
}

impl Printing {
    /// Prints one event.
    fn event(self, event: &Event) {
        if self.json {
            println!("{}", watch::to_json(event));
        } else {
            println!("{}", securely_core::event_text::line(event));
        }
    }

    /// Prints `event` if `pick` picks it; whether it is the operation's end.
    fn picked(self, event: &Event, pick: &mut impl FnMut(&Event) -> Pick) -> bool {
        let picked = pick(event);
        if !matches!(picked, Pick::Skip) {
            self.event(event);
        }
        matches!(picked, Pick::End)
    }

    /// Prints the result: `plain`, or `json` as one line.
    pub fn result(self, plain: &str, json: serde_json::Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{plain}");
        }
    }
}

/// What to do with one event.
pub(crate) enum Pick {
    /// Not the operation's.
    Skip,
    /// The operation's: print it.
    Print,
    /// The operation's end: print it and stop following.
    End,
}

/// Runs `call` and, unless quiet, prints the events `pick` selects until `pick` sees the
/// end, the stream ends, `call` fails, or [`AFTER_REPLY`] after `call` answered. Returns
/// `call`'s result and the number of the last event read (0: none); without a Watch
/// stream it only runs `call`.
pub(crate) async fn around<T>(
    target: &Target,
    printing: Printing,
    call: impl Future<Output = anyhow::Result<T>>,
    mut pick: impl FnMut(&Event) -> Pick,
) -> anyhow::Result<(T, u64)> {
    let stream = if printing.quiet {
        None
    } else {
        open(target, 0).await
    };
    let Some(mut stream) = stream else {
        return Ok((call.await?, 0));
    };
    tokio::pin!(call);
    let mut result = None;
    let mut stop_at = None;
    let mut last_seq = 0;
    loop {
        let give_up = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = &mut call, if result.is_none() => {
                // A refusal is not followed: the events in flight are another operation's.
                let refused = done.is_err();
                result = Some(done);
                if refused {
                    break;
                }
                stop_at = Some(Instant::now() + AFTER_REPLY);
            }
            next = stream.message() => match next {
                Ok(Some(event)) => {
                    last_seq = event.seq;
                    if printing.picked(&event, &mut pick) {
                        break;
                    }
                }
                _ => break,
            },
            _ = give_up => break,
        }
    }
    let done = match result {
        Some(done) => done,
        None => call.await,
    };
    Ok((done?, last_seq))
}

/// After the supervisor's exec: prints the events `pick` selects from the new image (or
/// from the same one, had the exec failed), continuing after event `after_seq`, until
/// `pick` sees the end or `give_up`. Watches again whenever a stream cannot be opened or
/// ends (each stream ends at an exec). Returns whether the end was seen.
pub(crate) async fn resumed(
    target: &Target,
    printing: Printing,
    mut after_seq: u64,
    give_up: Instant,
    mut pick: impl FnMut(&Event) -> Pick,
) -> bool {
    while Instant::now() < give_up {
        let Some(mut stream) = open(target, after_seq).await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                () = tokio::time::sleep_until(give_up) => return false,
            };
            let Ok(Some(event)) = next else { break };
            after_seq = event.seq;
            if printing.picked(&event, &mut pick) {
                return true;
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    false
}

/// A Watch stream on the supervisor after event `after_seq` (0: from the current state),
/// or `None` if it cannot be opened.
pub(crate) async fn open(target: &Target, after_seq: u64) -> Option<Streaming<Event>> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await.ok()?);
    let request = WatchRequest { after_seq };
    Some(client.watch(request).await.ok()?.into_inner())
}

/// The events of a restart of `daemon`: the restart's own (by its id, learnt from its
/// begin) and the daemon's between its begin and its end.
pub(crate) fn restart_of(daemon: &str) -> impl FnMut(&Event) -> Pick + '_ {
    let mut id = None;
    move |event| match event.kind.as_str() {
        "restart" if event.daemon == daemon && id.is_none() && event.state == "running" => {
            id = Some(event.id);
            Pick::Print
        }
        "restart" if Some(event.id) == id => Pick::End,
        "daemon" | "daemon_phase" | "retired" if id.is_some() && event.daemon == daemon => {
            Pick::Print
        }
        _ => Pick::Skip,
    }
}

/// The events of an upgrade up to the exec: from its `upgrading` phase or its begin,
/// every phase, daemon and upgrade event until the upgrade's end or the exec
/// (`re_executing`).
pub(crate) fn upgrade() -> impl FnMut(&Event) -> Pick {
    let mut started = false;
    move |event| match (event.kind.as_str(), event.state.as_str()) {
        ("phase", "upgrading") | ("upgrade", "running") => {
            started = true;
            Pick::Print
        }
        _ if !started => Pick::Skip,
        ("phase", "re_executing") => Pick::End,
        ("upgrade", _) => Pick::End,
        ("phase" | "daemon" | "daemon_phase" | "retired", _) => Pick::Print,
        _ => Pick::Skip,
    }
}

/// The events of upgrade `id` after the exec: every phase, daemon, upgrade and lagged
/// event up to the upgrade's end (not the current state a Watch may start with).
pub(crate) fn upgrade_resumed(id: u64) -> impl FnMut(&Event) -> Pick {
    move |event| match event.kind.as_str() {
        "upgrade" if event.id == id && event.state != "running" => Pick::End,
        "phase" | "daemon" | "daemon_phase" | "retired" | "upgrade" | "lagged" => Pick::Print,
        _ => Pick::Skip,
    }
}
