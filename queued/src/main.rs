//! securely-queued: Securely's durable, at-least-once job queue on sled.
//!
//! The daemon runs in named phases:
//! 1. **start**: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. **open**: the sled tree, the power-loss sync, the limits ([`open`]);
//! 3. **serve**: the committer thread, the reaper, the gRPC service on the inherited (or
//!    own) Unix socket, then readiness ([`serve`]);
//! 4. **drain**: on SIGTERM, `Drain` or loss of the supervisor, stop accepting calls and
//!    let in-flight ones finish within the grace period (waiting Reserve calls end at
//!    once); SIGINT skips the wait ([`drain`]);
//! 5. **close**: stop the reaper, commit what is pending, flush and drop every sled
//!    handle ([`close`]).

mod backoff;
mod commit;
mod disk_sync;
mod engine;
mod reaper;
mod service;
mod store;
mod validate;
mod wakeups;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use securely_core::daemon::Daemon;
use securely_core::rpc::RpcServer;
use securely_core::shutdown::ShutdownKind;
use tonic::service::Routes;

use crate::backoff::Backoff;
use crate::commit::Committer;
use crate::disk_sync::DiskSync;
use crate::engine::Engine;
use crate::reaper::Reaper;
use crate::service::QueueService;
use crate::store::Store;
use crate::validate::Limits;

/// The daemon's name (socket `queued.sock`, tree `<data_dir>/queued`).
const NAME: &str = "queued";

/// Whether every commit also `fdatasync`s the tree (power-loss durability, see
/// [`disk_sync`]). Measured on a 2-core VM (release, 64-byte jobs, 20k pushes over 64
/// streams): about 5.5-8k pushes/s either way, within the run-to-run noise, since sled's
/// flush already waits for the device (`sync_file_range`); one sequential client sees
/// p50 0.47 ms per push with it. So it stays on.
const SYNC_TO_DISK: bool = true;

fn main() -> ExitCode {
    let daemon = match Daemon::start(NAME) {
        Ok(daemon) => daemon,
        Err(e) => {
            eprintln!("securely-{NAME}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securely-{NAME}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(daemon: Daemon) -> anyhow::Result<()> {
    let opened = open(&daemon)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("queued")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(daemon, opened))
}

/// What the open phase hands to the serve phase.
struct Opened {
    store: Store,
    disk: Option<DiskSync>,
    limits: Limits,
    backoff: Backoff,
}

/// Phase 2: checks the queue settings against the limits and opens the tree.
fn open(daemon: &Daemon) -> anyhow::Result<Opened> {
    let limits = Limits::from_settings(&daemon.settings.queue);
    let backoff = Backoff::from_settings(&daemon.settings.queue);
    let tree = daemon.tree_path();
    let db = daemon.open_tree()?;
    let disk = if SYNC_TO_DISK {
        Some(DiskSync::open(&tree).with_context(|| format!("syncing {}", tree.display()))?)
    } else {
        None
    };
    let store = Store::open(db).with_context(|| format!("opening {}", tree.display()))?;
    tracing::info!(tree = %tree.display(), "opened the queue's tree");
    Ok(Opened {
        store,
        disk,
        limits,
        backoff,
    })
}

/// Phase 3: serves until a shutdown request, then drains and closes.
async fn serve(mut daemon: Daemon, opened: Opened) -> anyhow::Result<()> {
    daemon
        .shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    let listener = daemon.grpc_listener()?;
    let socket = daemon.socket_path();
    let committer = Committer::start(opened.store.db().clone(), opened.disk)
        .context("starting the committer thread")?;
    let engine = Arc::new(Engine::new(
        opened.store,
        committer.handle(),
        opened.backoff,
        daemon.shutdown.clone(),
    ));
    let reaper = Reaper::start(engine.clone());
    let queue = QueueService::new(engine.clone(), opened.limits, daemon.access.clone());
    let control = daemon.control_service(vec![format!("unix://{}", socket.display())]);
    let routes = Routes::new(queue.into_server()).add_service(control.into_server());
    let server = RpcServer::start(listener, routes);
    daemon.ready(format!("serving on {}", socket.display()));
    tracing::info!(socket = %socket.display(), "serving");

    let drained = drain(&daemon, server).await;
    let closed = close(reaper, committer, &engine).await;
    drained.and(closed)
}

/// Phase 4: waits for a shutdown request, then for in-flight calls (graceful, within
/// the grace period; waiting Reserve calls end at once) or for nothing (fast).
async fn drain(daemon: &Daemon, mut server: RpcServer) -> anyhow::Result<()> {
    let kind = tokio::select! {
        kind = daemon.shutdown.wait() => kind,
        why = server.ended() => anyhow::bail!("{why}"),
    };
    daemon.stopping();
    tracing::info!(?kind, "draining");
    match kind {
        ShutdownKind::Graceful => {
            let deadline = tokio::time::Instant::now() + daemon.settings.grace_period();
            server
                .stop_within(deadline, daemon.shutdown.wait_fast())
                .await;
        }
        ShutdownKind::Fast => server.abort(),
    }
    Ok(())
}

/// Phase 5: stops the reaper and the committer (which commits what is pending), then
/// flushes and drops the store, so no sled handle is left.
async fn close(reaper: Reaper, committer: Committer, engine: &Engine) -> anyhow::Result<()> {
    reaper.stop().await;
    committer.stop().await;
    engine.close().context("flushing the queue's tree")?;
    tracing::info!("closed the queue's tree");
    Ok(())
}
