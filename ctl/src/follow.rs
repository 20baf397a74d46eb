//! `restart` and `reload` print their own operation's events as they happen: a Watch
//! stream is opened before the request, and the events that belong to the operation are
//! printed (in `watch`'s plain format) while the request runs.

use std::future::Future;
use std::time::Duration;

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use tonic::Streaming;

use crate::target::Target;
use crate::watch;

/// How long the events still in the stream are read once the request has answered (the
/// supervisor publishes an operation's end before it answers; this bounds a refusal that
/// published nothing).
const AFTER_REPLY: Duration = Duration::from_millis(500);

/// What to do with one event.
pub(crate) enum Pick {
    /// Not the operation's.
    Skip,
    /// The operation's: print it.
    Print,
    /// The operation's end: print it and stop following.
    End,
}

/// Runs `call` and, unless `quiet`, prints the events `pick` selects until `pick` sees the
/// end, the stream ends, `call` fails, or [`AFTER_REPLY`] after `call` answered. Returns `call`'s
/// result; without a Watch stream it only runs `call`.
pub(crate) async fn around<T>(
    target: &Target,
    quiet: bool,
    call: impl Future<Output = anyhow::Result<T>>,
    mut pick: impl FnMut(&Event) -> Pick,
) -> anyhow::Result<T> {
    let stream = if quiet { None } else { open(target).await };
    let Some(mut stream) = stream else {
        return call.await;
    };
    tokio::pin!(call);
    let mut result = None;
    let mut stop_at = None;
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
                stop_at = Some(tokio::time::Instant::now() + AFTER_REPLY);
            }
            next = stream.message() => match next {
                Ok(Some(event)) => match pick(&event) {
                    Pick::Skip => {}
                    Pick::Print => println!("{}", watch::line(&event)),
                    Pick::End => {
                        println!("{}", watch::line(&event));
                        break;
                    }
                },
                _ => break,
            },
            _ = give_up => break,
        }
    }
    match result {
        Some(done) => done,
        None => call.await,
    }
}

/// A Watch stream on the supervisor, or `None` if it cannot be opened (the operation
/// then runs without its events).
async fn open(target: &Target) -> Option<Streaming<Event>> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await.ok()?);
    Some(client.watch(WatchRequest {}).await.ok()?.into_inner())
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
        "daemon" | "retired" if id.is_some() && event.daemon == daemon => Pick::Print,
        _ => Pick::Skip,
    }
}

/// The events of an upgrade: from its `upgrading` phase or its begin, every phase, daemon
/// and upgrade event until the upgrade's end or the exec (`re_executing`).
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
        ("phase" | "daemon" | "retired", _) => Pick::Print,
        _ => Pick::Skip,
    }
}
