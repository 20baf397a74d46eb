//! `securely-dnsd`: the DNS server for the local development TLD.
//!
//! Every name under `dns.tld` resolves to the configured addresses, explicit records
//! (set over gRPC, kept in sled) override that per name, `localhost` is answered
//! locally, and other names go to `dns.upstreams` (or are refused). DNS is served by
//! dnsd's own loops, one per socket ([`serve_udp`], [`serve_tcp`]), with hickory's types
//! for the messages and hickory-resolver for forwarding.
//!
//! The process runs in named phases:
//! 1. **start** — settings, logging, inherited fds.
//! 2. **prepare** — the tokio runtime, signal handling, the DNS sockets, the forwarder,
//!    the zone and the handler: everything that needs no sled tree.
//! 3. **await turn** — under the supervisor, report `PREPARED=1` and wait for `ACQUIRE`
//!    (the instance replaced has released the tree by then); standalone, go on at once.
//! 4. **open the record store** — open the tree (retrying while the previous process's
//!    lock lingers) and load the records.
//! 5. **serve** — DNS on the sockets, gRPC on its socket (taken only now: standalone,
//!    it is bound, which fails while another instance runs), report ready.
//! 6. **run** — until a shutdown request, carrying out the supervisor's hand-over
//!    commands (see [`control_plane`]): on `RELEASE` gRPC stops and the tree closes while
//!    DNS goes on answering from the in-memory records; on `RESUME` the tree reopens, the
//!    records reload and gRPC serves again.
//! 7. **stop** — graceful: drain DNS (see [`dns_server`]: stop reading and accepting
//!    first, so that the instance that took over the shared sockets gets everything
//!    from then on, then answer every question already taken and close the TCP
//!    connections cleanly, within the grace period), then stop gRPC unless released.
//!    Fast: drop DNS and gRPC at once.
//! 8. **close the record store** (if it is attached), exit 0.
//!
//! A shutdown request before the store is open ends the process cleanly without
//! serving; a failed release or resume exits non-zero.

#![forbid(unsafe_code)]

mod admin;
mod control_plane;
mod dns_server;
mod forward;
mod handler;
mod incoming;
mod listeners;
mod local_zone;
mod localhost;
mod record_spec;
mod records;
mod reply;
mod reply_size;
mod serve_tcp;
mod serve_udp;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use securely_core::daemon::Daemon;
use securely_core::shutdown::ShutdownKind;
use tokio::time::Instant;

use crate::control_plane::{ControlPlane, Summary};
use crate::dns_server::DnsServer;
use crate::forward::Forwarder;
use crate::handler::{DnsHandler, FORWARD_SLOTS};
use crate::listeners::DnsSockets;
use crate::local_zone::LocalZone;
use crate::record_spec::ZoneNames;
use crate::records::RecordStore;

/// The daemon's name (socket `dnsd.sock`, tree `<data_dir>/dnsd`).
const NAME: &str = "dnsd";
/// How long the runtime waits for tasks still running when the serving phase ends.
const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let daemon = match Daemon::start(NAME) {
        Ok(daemon) => daemon,
        Err(error) => return fail(anyhow!(error)),
    };
    match run(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("securely-{NAME}: error: {error:#}");
    ExitCode::FAILURE
}

/// Everything after start-up: the serving runtime, then closing the record store.
fn run(daemon: Daemon) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dnsd")
        .build()
        .context("starting the tokio runtime")?;
    let names = ZoneNames::new(&daemon.settings.dns.tld);
    let store = Arc::new(RecordStore::detached(&names));
    let served = runtime.block_on(serve(daemon, store.clone(), names));
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);

    // Phase: close the record store. Detaching waits for a write still running on a
    // blocking thread (the runtime does not wait for those, and a fast stop does not
    // wait for the admin call), and closes the tree even though that thread still holds
    // the store.
    let closed = store.detach().context("closing the record store");
    if served.is_ok() && closed.is_ok() {
        tracing::info!("stopped");
    }
    served.and(closed)
}

/// Prepares, waits for the tree, serves DNS and gRPC through hand-over commands, then
/// stops them the way the shutdown request asks.
async fn serve(
    mut daemon: Daemon,
    store: Arc<RecordStore>,
    names: ZoneNames,
) -> anyhow::Result<()> {
    // Phase: prepare (signals are watched from here on).
    daemon
        .shutdown
        .watch_signals()
        .context("watching signals")?;
    let sockets = DnsSockets::take(&mut daemon)?;
    let settings = &daemon.settings;
    let forwarder = Forwarder::new(&settings.dns.upstreams)?;
    let forwarding = match forwarder.upstreams() {
        [] => "no upstreams (other names are refused)".to_string(),
        upstreams => format!(
            "forwarding to {}",
            upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let zone = LocalZone::new(&settings.dns, store.clone())?;
    let summary = Summary {
        apex: zone.apex().to_string(),
        listeners: sockets.describe(),
        forwarding,
    };
    let handler = DnsHandler::new(zone, forwarder, settings.dns.ttl, FORWARD_SLOTS);

    // Phase: await turn.
    if !daemon.await_turn().await {
        tracing::info!("asked to stop before serving");
        return Ok(());
    }

    // Phase: open the record store.
    if !control_plane::attach(&daemon, &store).await? {
        return Ok(());
    }

    // Phase: serve (DNS, gRPC, ready). The gRPC socket is taken only now: standalone,
    // binding it fails while another instance runs, which must first let go of the tree.
    let mut dns = DnsServer::start(sockets, handler)?;
    let grpc_listener = daemon.grpc_listener()?;
    let mut plane = ControlPlane::new(store, names, grpc_listener, summary);
    plane.serve(&daemon)?;

    // Phase: run.
    let kind = loop {
        let command = tokio::select! {
            kind = daemon.shutdown.wait() => break kind,
            ended = plane.ended() => return Err(anyhow!("gRPC server stopped: {ended}")),
            failed = dns.failed() => return Err(anyhow!("DNS server stopped: {failed}")),
            command = daemon.next_command() => command,
        };
        if let Err(error) = plane.obey(&daemon, command).await {
            tracing::error!("{command:?} failed: {error:#}");
            return Err(error);
        }
    };

    // Phase: stop.
    daemon.stopping();
    match kind {
        ShutdownKind::Graceful => {
            let deadline = Instant::now() + daemon.settings.grace_period();
            dns.drain(deadline, daemon.shutdown.wait_fast()).await;
            plane.stop(&daemon, deadline).await;
        }
        ShutdownKind::Fast => {
            tracing::info!("stopping now");
            drop(dns);
            plane.abort();
        }
    }
    Ok(())
}
