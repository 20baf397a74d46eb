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
mod in_flight;
mod listeners;
mod local_zone;
mod localhost;
mod record_spec;
mod records;
mod reply;

use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hickory_server::Server;
use securely_core::daemon::Daemon;
use securely_core::logging::LOG_FILTER_ENV;
use securely_core::rpc;
use securely_core::shutdown::ShutdownKind;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::admin::AdminService;
use crate::forward::Forwarder;
use crate::handler::DnsHandler;
use crate::in_flight::InFlight;
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
/// Once no admin call is in flight, how long gRPC connections get to close cleanly
/// (HTTP/2 graceful close needs the client's PING acknowledgement) before they are cut.
const GRPC_CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the runtime waits for tasks still running when the serving phase ends.
const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    quiet_query_log_by_default();
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

fn quiet_query_log_by_default() {
    if std::env::var_os(LOG_FILTER_ENV).is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var(LOG_FILTER_ENV, DEFAULT_LOG_FILTER) };
    }
}

/// Everything after start-up: store, sockets, the serving runtime, and the final flush.
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

    // Phase: take the sockets (inherited, or bound from the settings).
    let sockets = DnsSockets::take(&mut daemon)?;
    let runtime_dir = daemon.settings.runtime_dir();
    std::fs::create_dir_all(&runtime_dir)
        .with_context(|| format!("creating {}", runtime_dir.display()))?;
    let grpc_listener = daemon.grpc_listener()?;

    // Phase: serve until asked to stop.
    let served = runtime.block_on(serve(daemon, store.clone(), names, sockets, grpc_listener));
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);

    // Phase: close the store; every task that held it is gone with the runtime.
    let flushed = store.flush().context("flushing the record store");
    drop(store);
    if served.is_ok() && flushed.is_ok() {
        tracing::info!("stopped");
    }
    served.and(flushed)
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
    let in_flight = Arc::new(InFlight::new());
    let mut dns = Server::new(DnsHandler::new(
        zone,
        forwarder,
        settings.dns.ttl,
        in_flight.clone(),
    ));
    sockets.register(&mut dns)?;

    // Phase: gRPC.
    let admin_calls = Arc::new(InFlight::new());
    let admin = AdminService::new(
        store.clone(),
        names,
        settings.dns.ttl,
        daemon.access.clone(),
        admin_calls.clone(),
    );
    let routes = Routes::new(admin.into_server())
        .add_service(daemon.control_service(listeners.clone()).into_server());
    let (stop_grpc, grpc_stop_requested) = oneshot::channel::<()>();
    let mut grpc = tokio::spawn(rpc::serve(grpc_listener, routes, async {
        let _ = grpc_stop_requested.await;
    }));

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
        ended = &mut grpc => return Err(anyhow!("gRPC server stopped: {}", describe_end(ended))),
        ended = dns.block_until_done() => {
            return Err(anyhow!("DNS server stopped: {}", ended.map_or_else(|e| e.to_string(), |()| "no socket left".into())));
        }
    };

    match kind {
        ShutdownKind::Graceful => {
            daemon.stopping();
            let deadline = Instant::now() + settings.grace_period();
            drain_dns(&daemon, &mut dns, &in_flight, deadline).await;
            stop_grpc_gracefully(&daemon, stop_grpc, grpc, &admin_calls, deadline).await;
        }
        ShutdownKind::Fast => {
            tracing::info!("stopping now");
            drop(dns);
            let _ = stop_grpc.send(());
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
    tracing::info!(in_flight = in_flight.current(), "draining DNS");
    tokio::select! {
        () = in_flight.idle() => {}
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(in_flight = in_flight.current(), "grace period over; dropping the questions left");
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

/// Stops accepting gRPC calls and lets the admin calls in flight finish, until
/// `deadline`; connections still open after that (idle clients) are cut.
async fn stop_grpc_gracefully(
    daemon: &Daemon,
    stop: oneshot::Sender<()>,
    mut grpc: JoinHandle<Result<(), rpc::ServeError>>,
    admin_calls: &InFlight,
    deadline: Instant,
) {
    let _ = stop.send(());
    let calls_done = async {
        admin_calls.idle().await;
        tokio::time::sleep(GRPC_CLOSE_TIMEOUT).await;
    };
    tokio::select! {
        ended = &mut grpc => {
            if let Ok(Err(error)) = ended {
                tracing::warn!(%error, "gRPC server stopped with an error");
            }
        }
        () = calls_done => {
            tracing::debug!("closing idle gRPC connections");
            grpc.abort();
        }
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("grace period over; cutting gRPC calls short");
            grpc.abort();
        }
        () = daemon.shutdown.wait_fast() => grpc.abort(),
    }
}

fn describe_end(ended: Result<Result<(), rpc::ServeError>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "it ended on its own".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    }
}
