//! securely-proxyd: Securely's HTTP reverse proxy, on pingora.
//!
//! It routes requests by Host to the sites linked over gRPC (`ProxyAdmin`), kept in its
//! sled tree. The phases of a run, in order:
//!
//! 1. start: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. sockets: the HTTP listeners (inherited or bound);
//! 3. assemble: pingora's server with the proxy service, which adopts the listeners and
//!    counts the client connections and the requests in flight, for the drain; the
//!    routing table it reads is still empty;
//! 4. control: the lifecycle driver on its own thread ([`control`]): the turn, the sled
//!    tree (loaded into the routing table, [`tenant`]), the proxy ([`plane`]: started only
//!    now), gRPC, readiness, the hand-over commands (release the tree and keep proxying,
//!    or take it back) and the shutdown sequence;
//! 5. run: pingora's main loop on the main thread, once the control thread says so and
//!    until it releases it (after the drain: every client connection has ended, see
//!    [`drain`]). A stop before the tree was loaded never runs pingora;
//! 6. exit: once the control thread has closed the store (if proxyd still holds it).

#![forbid(unsafe_code)]

mod admin;
mod conf;
mod connections;
mod control;
mod drain;
mod forwarding;
mod https;
mod listeners;
mod loops;
mod pages;
mod plane;
mod probe;
mod proxy;
mod resolve;
mod routing;
mod service;
mod sites;
mod store;
mod tenant;
mod tenure;
#[cfg(test)]
mod test_support;
mod tls;
mod upgrade;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use securely_core::daemon::Daemon;
use securely_core::drain::InFlight;
use tokio::sync::{oneshot, watch};

use crate::connections::Connections;
use crate::https::HttpsPolicy;
use crate::listeners::HttpListener;
use crate::loops::OwnListeners;
use crate::plane::ProxyPlane;
use crate::proxy::SiteProxy;
use crate::routing::Routes;
use crate::service::ProxyService;
use crate::store::StoreSetup;
use crate::tenant::SiteTenant;
use crate::tenure::StoreSlot;
use crate::tls::accept::TlsAcceptor;
use crate::tls::certs::Certs;

/// jemalloc instead of glibc's malloc: under load glibc's malloc/free took about 18 % of
/// proxyd's CPU (pingora allocates per request). Measured against nginx in the same runs
/// (bench/README.md): CPU per request 2.0x nginx's with glibc, 1.8x with jemalloc, 1.6x
/// with mimalloc, whose RSS after load was 3x higher (62 MiB against 18).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let listeners = listeners::take(&mut daemon)?;
    let http_addrs: Vec<_> = listeners.http.iter().map(HttpListener::addr).collect();
    let https_addrs: Vec<_> = listeners.https.iter().map(HttpListener::addr).collect();

    // 3. assemble
    let routes = Arc::new(Routes::default());
    let certs = Certs::new(routes.clone());
    let setup = StoreSetup {
        tld: daemon.settings.dns.tld.clone(),
        own: OwnListeners::new(listeners.addrs()),
        routes,
        tree: daemon.tree_path(),
        certs: certs.clone(),
    };
    let tls = match https_addrs.is_empty() {
        true => None,
        false => Some(Arc::new(
            TlsAcceptor::new(certs.clone(), https_addrs.clone()).context("setting up TLS")?,
        )),
    };
    let in_flight = InFlight::new();
    let connections = Connections::new();
    let (stop_accepting, accepting) = watch::channel(false);
    let (pingora_release, pingora_watch) = drain::pingora_release();
    let (service_failed, service_failure) = oneshot::channel();
    let mut server =
        Server::new_with_opt_and_conf(None::<Opt>, conf::server_conf(&daemon.settings));
    let proxy = SiteProxy::new(setup.routes.clone(), in_flight.clone())
        .with_https(HttpsPolicy::new(&https_addrs, &setup.tld));
    let tunnels = proxy.tunnels();
    server.add_service(ProxyService::new(
        &server.configuration,
        proxy,
        listeners.http.into_iter().chain(listeners.https).collect(),
        tls,
        accepting,
        connections.clone(),
        service_failed,
    ));
    let phases = server.watch_execution_phase();

    // 4. control
    let (run_pingora, run_pingora_now) = std::sync::mpsc::sync_channel(1);
    let tenant = SiteTenant {
        slot: Arc::new(StoreSlot::default()),
        setup,
        access: daemon.access.clone(),
        http: http_addrs.clone(),
        https: https_addrs.clone(),
        socket: daemon.socket_path(),
    };
    let plane = ProxyPlane {
        run_pingora: Some(run_pingora),
        phases: Some(phases),
        http: http_addrs,
        https: https_addrs,
        certs,
        service_failure,
        stop_accepting,
        connections,
        in_flight,
        tunnels,
        pingora: pingora_release,
        grace: daemon.settings.grace_period(),
    };
    let control = control::spawn(daemon, tenant, plane).context("starting the control thread")?;

    // 5. run (unless the control thread ends first)
    if run_pingora_now.recv().is_ok() {
        server.run(RunArgs {
            shutdown_signal: Box::new(pingora_watch),
        });
    }

    // 6. exit
    control
        .join()
        .map_err(|_| anyhow!("the control thread panicked"))??;
    Ok(())
}
