//! securely-proxyd: Securely's HTTP reverse proxy, on pingora.
//!
//! It routes requests by Host to the sites linked over gRPC (`ProxyAdmin`), kept in its
//! sled tree. The phases of a run, in order:
//!
//! 1. start: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. sockets: the HTTP listeners (inherited or bound) and the gRPC socket;
//! 3. store: the sled tree, loaded into the routing table;
//! 4. assemble: pingora's server with the proxy service, which adopts the listeners;
//! 5. control: signals, gRPC, readiness and the shutdown sequence on their own thread
//!    ([`control`]);
//! 6. run: pingora's main loop on the main thread, until the control plane releases it;
//! 7. exit: once the control plane has closed the store.

mod admin;
mod conf;
mod control;
mod drain;
mod forwarding;
mod listeners;
mod loops;
mod pages;
mod proxy;
mod resolve;
mod routing;
mod service;
mod sites;
mod store;
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

use crate::control::ControlPlane;
use crate::listeners::HttpListener;
use crate::loops::OwnListeners;
use crate::proxy::SiteProxy;
use crate::routing::Routes;
use crate::service::ProxyService;
use crate::store::SiteStore;

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

    // 3. store
    let routes = Arc::new(Routes::default());
    let store = SiteStore::open(
        daemon.open_tree()?,
        &daemon.settings.dns.tld,
        OwnListeners::new(http_addrs.clone()),
        routes.clone(),
    )
    .context("loading sites")?;

    // 4. assemble
    let in_flight = InFlight::new();
    let (stop_accepting, accepting) = watch::channel(false);
    let (pingora_release, pingora_watch) = drain::pingora_release();
    let (service_failed, service_failure) = oneshot::channel();
    let mut server =
        Server::new_with_opt_and_conf(None::<Opt>, conf::server_conf(&daemon.settings));
    let proxy = SiteProxy::new(routes, in_flight.clone());
    server.add_service(ProxyService::new(
        &server.configuration,
        proxy,
        http,
        accepting,
        service_failed,
    ));
    let phases = server.watch_execution_phase();

    // 5. control
    let control = ControlPlane {
        daemon,
        grpc,
        in_flight,
        stop_accepting,
        pingora: pingora_release,
        phases,
        service_failure,
        http: http_addrs,
    }
    .spawn(store)
    .context("starting the control thread")?;

    // 6. run
    server.run(RunArgs {
        shutdown_signal: Box::new(pingora_watch),
    });

    // 7. exit
    control
        .join()
        .map_err(|_| anyhow!("the control thread panicked"))??;
    Ok(())
}
