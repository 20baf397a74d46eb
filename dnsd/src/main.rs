//! `securely-dnsd`: the DNS server for the local development TLD.
//!
//! Every name under `dns.tld` resolves to the configured addresses, explicit records
//! (set over gRPC, kept in sled) override that per name, `localhost` is answered
//! locally, and other names go to `dns.upstreams` (or are refused).
//!
//! The process runs in named phases: start (settings, logging, inherited fds), open the
//! record store, take the DNS sockets, serve DNS and gRPC on one tokio runtime, report
//! ready, wait for a shutdown request, drain (graceful) or stop (fast), flush the store,
//! exit 0.

mod admin;
mod forward;
mod handler;
mod listeners;
mod local_zone;
mod localhost;
mod record_spec;
mod records;
mod reply;
mod reply_size;

use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hickory_server::Server;
use securely_core::daemon::Daemon;
use securely_core::drain::InFlight;
use securely_core::rpc::RpcServer;
use securely_core::shutdown::ShutdownKind;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::forward::Forwarder;
use crate::handler::{DnsHandler, FORWARD_SLOTS};
use crate::listeners::DnsSockets;
use crate::local_zone::LocalZone;
use crate::record_spec::ZoneNames;
use crate::records::RecordStore;

/// The daemon's name (socket `dnsd.sock`, tree `<data_dir>/dnsd`).
const NAME: &str = "dnsd";
/// The log filter when `SECURELY_LOG` is unset: hickory-server logs every query at
/// `info`, which is a query log rather than a service log.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";
/// How long hickory's listener tasks get to wind down once told to stop.
const DNS_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the runtime waits for tasks still running when the serving phase ends.
const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let daemon = match Daemon::start_with_log_filter(NAME, DEFAULT_LOG_FILTER) {
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

/// Everything after start-up: store, sockets, the serving runtime, and closing the store.
fn run(mut daemon: Daemon) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dnsd")
        .build()
        .context("starting the tokio runtime")?;

    // Phase: open the record store (signals are watched from here on).
    let names = ZoneNames::new(&daemon.settings.dns.tld);
    let store = match runtime.block_on(open_store(&daemon, &names)) {
        Ok(Some(store)) => store,
        Ok(None) => {
            runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
            tracing::info!("stopped before serving");
            return Ok(());
        }
        Err(error) => {
            runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
            return Err(error);
        }
    };

    // Phase: take the sockets (inherited, or bound from the settings), then serve until
    // asked to stop.
    let served = match take_sockets(&mut daemon) {
        Ok((sockets, grpc_listener)) => {
            runtime.block_on(serve(daemon, store.clone(), names, sockets, grpc_listener))
        }
        Err(error) => Err(error),
    };
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);

    // Phase: close the store.
    let closed = close_store(store);
    if served.is_ok() && closed.is_ok() {
        tracing::info!("stopped");
    }
    served.and(closed)
}

/// Opens the sled tree and loads the records. The tree may still be held by the
/// instance dnsd replaces, so opening retries for a while; a shutdown request meanwhile
/// ends start-up cleanly (`None`).
async fn open_store(
    daemon: &Daemon,
    names: &ZoneNames,
) -> anyhow::Result<Option<Arc<RecordStore>>> {
    daemon
        .shutdown
        .watch_signals()
        .context("watching signals")?;
    let path = daemon.tree_path();
    tracing::info!(path = %path.display(), "opening the record store");
    let names = names.clone();
    let opening = tokio::task::spawn_blocking(move || -> anyhow::Result<RecordStore> {
        let db = securely_core::store::open_tree(&path, securely_core::store::OPEN_DEADLINE)?;
        RecordStore::open(db, &names).context("loading the records")
    });
    tokio::select! {
        opened = opening => Ok(Some(Arc::new(opened.context("opening the record store")??))),
        kind = daemon.shutdown.wait() => {
            tracing::info!(?kind, "asked to stop while opening the record store");
            Ok(None)
        }
    }
}

/// The DNS sockets and the gRPC listener.
fn take_sockets(daemon: &mut Daemon) -> anyhow::Result<(DnsSockets, UnixListener)> {
    let sockets = DnsSockets::take(daemon)?;
    let grpc_listener = daemon.grpc_listener()?;
    Ok((sockets, grpc_listener))
}

/// Flushes and closes the record store. Every task holding it ended with the runtime,
/// except a write still running on a blocking thread (the runtime does not wait for
/// those, and a fast stop does not wait for the admin call): then the store is flushed
/// and left to that thread, and sled closes when the process exits.
fn close_store(store: Arc<RecordStore>) -> anyhow::Result<()> {
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().context("closing the record store"),
        Err(store) => {
            tracing::warn!(
                holders = Arc::strong_count(&store) - 1,
                "a record write is still running; flushing the store without closing it"
            );
            store.flush().context("flushing the record store")
        }
    }
}

/// Serves DNS and gRPC, then stops them the way the shutdown request asks.
async fn serve(
    daemon: Daemon,
    store: Arc<RecordStore>,
    names: ZoneNames,
    sockets: DnsSockets,
    grpc_listener: UnixListener,
) -> anyhow::Result<()> {
    let settings = &daemon.settings;
    let listeners = sockets.describe();

    // Phase: DNS.
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
    let apex = zone.apex().to_string();
    let in_flight = InFlight::new();
    let mut dns = Server::new(DnsHandler::new(
        zone,
        forwarder,
        settings.dns.ttl,
        in_flight.clone(),
        FORWARD_SLOTS,
    ));
    sockets.register(&mut dns)?;

    // Phase: gRPC.
    let admin = AdminService::new(
        store.clone(),
        names,
        settings.dns.ttl,
        daemon.access.clone(),
    );
    let routes = Routes::new(admin.into_server())
        .add_service(daemon.control_service(listeners.clone()).into_server());
    let mut grpc = RpcServer::start(grpc_listener, routes);

    // Phase: ready.
    let status = format!(
        "serving {apex} on {}; {} explicit records; {forwarding}",
        listeners.join(" "),
        store.len()
    );
    tracing::info!("{status}");
    daemon.ready(status);

    let kind = tokio::select! {
        kind = daemon.shutdown.wait() => kind,
        ended = grpc.ended() => return Err(anyhow!("gRPC server stopped: {ended}")),
        ended = dns.block_until_done() => {
            return Err(anyhow!("DNS server stopped: {}", ended.map_or_else(|e| e.to_string(), |()| "no socket left".into())));
        }
    };

    // Phase: stop.
    daemon.stopping();
    match kind {
        ShutdownKind::Graceful => {
            let deadline = Instant::now() + settings.grace_period();
            drain_dns(&daemon, &mut dns, &in_flight, deadline).await;
            stop_grpc(&daemon, grpc, deadline).await;
        }
        ShutdownKind::Fast => {
            tracing::info!("stopping now");
            drop(dns);
            grpc.abort();
        }
    }
    Ok(())
}

/// Finishes the questions in flight (new ones are still answered meanwhile, since
/// hickory cannot stop reading without aborting its tasks), then closes the sockets.
async fn drain_dns(
    daemon: &Daemon,
    dns: &mut Server<DnsHandler>,
    in_flight: &InFlight,
    deadline: Instant,
) {
    tracing::info!(in_flight = in_flight.count(), "draining DNS");
    tokio::select! {
        () = in_flight.idle() => {}
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(in_flight = in_flight.count(), "grace period over; dropping the questions left");
        }
        () = daemon.shutdown.wait_fast() => tracing::info!("fast stop requested while draining"),
    }
    dns.shutdown_token().cancel();
    match tokio::time::timeout(DNS_STOP_TIMEOUT, dns.block_until_done()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "DNS server stopped with an error"),
        Err(_) => tracing::warn!("DNS listeners did not stop in time; abandoning them"),
    }
}

/// Stops accepting gRPC calls and lets the admin calls in flight finish (until
/// `deadline`); a fast request meanwhile cuts them short.
async fn stop_grpc(daemon: &Daemon, grpc: RpcServer, deadline: Instant) {
    tracing::info!(calls = grpc.calls_in_flight(), "stopping gRPC");
    grpc.stop_within(deadline, daemon.shutdown.wait_fast())
        .await;
}
