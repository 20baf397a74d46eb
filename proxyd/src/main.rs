//! securely-proxyd: Securely's HTTP reverse proxy, on pingora.
//!
//! It routes requests by Host to the sites linked over gRPC (`ProxyAdmin`), kept in its
//! sled tree. The phases of a run, in order:
//!
//! 1. start: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. sockets: the HTTP listeners (inherited or bound) and the gRPC socket;
//! 3. turn: under the supervisor, `PREPARED=1`, then wait for `ACQUIRE` (the previous
//!    instance has released the sled tree by then); a shutdown meanwhile ends proxyd
//!    here, exit 0. Standalone, no wait;
//! 4. store: the sled tree, loaded into the routing table;
//! 5. assemble: pingora's server with the proxy service, which adopts the listeners and
//!    counts the client connections and the requests in flight, for the drain;
//! 6. control: signals, gRPC, readiness, the hand-over commands (release the tree and
//!    keep proxying, or take it back) and the shutdown sequence on their own thread
//!    ([`control`]);
//! 7. run: pingora's main loop on the main thread, until the control plane releases it
//!    (after the drain: every client connection has ended, see [`drain`]);
//! 8. exit: once the control plane has closed the store (if proxyd still holds it).

#![forbid(unsafe_code)]

mod admin;
mod conf;
mod connections;
mod control;
mod drain;
mod forwarding;
mod handover;
mod listeners;
mod loops;
mod pages;
mod proxy;
mod resolve;
mod routing;
mod service;
mod sites;
mod store;
mod tenure;
#[cfg(test)]
mod test_support;

use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: under load glibc's malloc/free took about 18 % of
/// proxyd's CPU (pingora allocates per request). Measured against nginx in the same runs
/// (bench/README.md): CPU per request 2.0x nginx's with glibc, 1.8x with jemalloc, 1.6x
/// with mimalloc, whose RSS after load was 3x higher (62 MiB against 18).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use securely_core::daemon::Daemon;
use securely_core::drain::InFlight;
use tokio::sync::{oneshot, watch};

use crate::connections::Connections;
use crate::control::ControlPlane;
use crate::listeners::HttpListener;
use crate::loops::OwnListeners;
use crate::proxy::SiteProxy;
use crate::routing::Routes;
use crate::service::ProxyService;
use crate::store::StoreSetup;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securely-proxyd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // 1. start
    let mut daemon = Daemon::start("proxyd")?;

    // 2. sockets
    let http = listeners::take(&mut daemon)?;
    let http_addrs: Vec<_> = http.iter().map(HttpListener::addr).collect();
    let grpc = daemon.grpc_listener()?;

    // 3. turn
    if !daemon.await_turn_blocking() {
        tracing::info!("shutdown requested before taking the sled tree; exiting");
        return Ok(());
    }

    // 4. store
    let store_setup = StoreSetup {
        tld: daemon.settings.dns.tld.clone(),
        own: OwnListeners::new(http_addrs.clone()),
        routes: Arc::new(Routes::default()),
        tree: daemon.tree_path(),
    };
    let store = store_setup
        .open(daemon.open_tree()?)
        .context("loading sites")?;

    // 5. assemble
    let in_flight = InFlight::new();
    let connections = Connections::new();
    let (stop_accepting, accepting) = watch::channel(false);
    let (pingora_release, pingora_watch) = drain::pingora_release();
    let (service_failed, service_failure) = oneshot::channel();
    let mut server =
        Server::new_with_opt_and_conf(None::<Opt>, conf::server_conf(&daemon.settings));
    let proxy = SiteProxy::new(store_setup.routes.clone(), in_flight.clone());
    server.add_service(ProxyService::new(
        &server.configuration,
        proxy,
        http,
        accepting,
        connections.clone(),
        service_failed,
    ));
    let phases = server.watch_execution_phase();

    // 6. control
    let control = ControlPlane {
        daemon,
        grpc,
        store_setup,
        in_flight,
        connections,
        stop_accepting,
        pingora: pingora_release,
        phases,
        service_failure,
        http: http_addrs,
    }
    .spawn(store)
    .context("starting the control thread")?;

    // 7. run
    server.run(RunArgs {
        shutdown_signal: Box::new(pingora_watch),
    });

    // 8. exit
    control
        .join()
        .map_err(|_| anyhow!("the control thread panicked"))??;
    Ok(())
}
