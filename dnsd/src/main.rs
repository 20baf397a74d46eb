//! `securely-dnsd`: the DNS server for the local development TLD.
//!
//! Every name under `dns.tld` resolves to the configured addresses, explicit records
//! (set over gRPC, kept in sled) override that per name, `localhost` is answered
//! locally, and other names go to `dns.upstreams` (or are refused). DNS is served by
//! dnsd's own loops, one per socket ([`dns_server`]), with hickory's types for the
//! messages and hickory-resolver for forwarding.
//!
//! The process runs in named phases:
//! 1. **start** — settings, logging, inherited fds.
//! 2. **prepare** — the tokio runtime, the DNS sockets, the forwarder, the zone and the
//!    handler: everything that needs no sled tree.
//! 3. **run** — the lifecycle driver's ([`securely_core::lifecycle`]) phases, over
//!    dnsd's tenant ([`tenure`]: the record store's tree and `DnsAdmin`) and data plane
//!    ([`dns_server`]: DNS, started once the records are loaded): the turn, the tree, the
//!    hand-over (on `RELEASE` gRPC stops and the tree closes while DNS goes on answering
//!    from the in-memory records; on `RESUME` the tree reopens, the records reload and
//!    gRPC serves again) and the stop (graceful: drain DNS: stop reading and accepting
//!    first, so that the instance that took over the shared sockets gets everything from
//!    then on, then answer every question already taken and close the TCP connections
//!    cleanly, within the grace period; then gRPC and the tree. Fast: at once).
//! 4. **close the record store** if an abandoned opening attached it after all, exit.

#![forbid(unsafe_code)]

mod admin;
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
mod tenure;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use securely_core::daemon::Daemon;
use securely_core::lifecycle;

use crate::dns_server::DnsPlane;
use crate::forward::Forwarder;
use crate::handler::{DnsHandler, FORWARD_SLOTS};
use crate::listeners::DnsSockets;
use crate::local_zone::LocalZone;
use crate::record_spec::ZoneNames;
use crate::records::RecordStore;
use crate::tenure::{RecordTenant, Summary};

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
fn run(mut daemon: Daemon) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dnsd")
        .build()
        .context("starting the tokio runtime")?;
    let names = ZoneNames::new(&daemon.settings.dns.tld);
    let store = Arc::new(RecordStore::detached(&names));
    let served = runtime.block_on(serve(&mut daemon, store.clone(), names));
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);

    // Phase: close the record store. The driver closed it unless an opening abandoned for
    // a shutdown request attached it after all; detaching waits for a write still running
    // on a blocking thread and closes the tree even though that thread holds the store.
    let closed = store.detach().context("closing the record store");
    served.and(closed)
}

/// Prepares the data plane and the tenant, then lets the lifecycle driver run them.
async fn serve(
    daemon: &mut Daemon,
    store: Arc<RecordStore>,
    names: ZoneNames,
) -> anyhow::Result<()> {
    let sockets = DnsSockets::take(daemon)?;
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
    let mut plane = DnsPlane::new(sockets, handler);
    let mut tenant = RecordTenant {
        store,
        names,
        tree: daemon.tree_path(),
        default_ttl: settings.dns.ttl,
        access: daemon.access.clone(),
        summary,
    };
    lifecycle::run(daemon, &mut tenant, &mut plane).await?;
    Ok(())
}
