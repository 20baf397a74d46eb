//! securely-queued: Securely's durable, at-least-once job queue on sled.
//!
//! The daemon runs in named phases:
//! 1. **start**: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. **prepare**: the async runtime, the signal handlers, the limits and the gRPC
//!    listener: everything that needs no tree ([`prepare`]);
//! 3. **await turn**: under the supervisor, `PREPARED=1`, then wait for `ACQUIRE` (the
//!    previous instance has closed the tree); a shutdown meanwhile exits 0 without
//!    serving; standalone, at once ([`Daemon::await_turn`]);
//! 4. **open**: a [`Tenure`]: the sled tree (retrying while the previous holder lets go),
//!    the power-loss sync and the store, then the committer thread, the reaper and the
//!    gRPC service on a clone of the listener; then readiness ([`Tenure::open`]);
//! 5. **serve**: until a shutdown request or the supervisor's `RELEASE` ([`serve`]);
//! 6. on a shutdown (SIGTERM, `Drain` or loss of the supervisor):
//!    - **drain**: stop accepting calls and let in-flight ones finish within the grace
//!      period (waiting Reserve calls end at once); SIGINT skips the wait ([`drain`]);
//!    - **close**: stop the reaper, commit what is pending, flush and drop every sled
//!      handle; exit ([`Tenure::end`]);
//! 7. on `RELEASE` (a hand-over to the next instance):
//!    - **release**: the same stop and close, then `RELEASED=1` ([`release`]); a failure
//!      to flush exits non-zero;
//!    - **released**: no tree, no gRPC server; wait for a shutdown (exit 0: nothing to
//!      drain) or `RESUME` (the next instance failed: back to phase 4, reloading
//!      everything from the tree) ([`released`]).

mod backoff;
mod commit;
mod engine;
mod reaper;
mod service;
mod store;
mod tenure;
mod validate;
mod wakeups;

use std::process::ExitCode;

use anyhow::Context;
use securely_core::daemon::Daemon;
use securely_core::readiness::Command;
use securely_core::shutdown::ShutdownKind;

use crate::backoff::Backoff;
use crate::tenure::{Prepared, Tenure};
use crate::validate::Limits;

/// The daemon's name (socket `queued.sock`, tree `<data_dir>/queued`).
const NAME: &str = "queued";

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("queued")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(lifecycle(daemon))
}

/// Phases 2 to 7.
async fn lifecycle(mut daemon: Daemon) -> anyhow::Result<()> {
    let prepared = prepare(&mut daemon)?;
    if !daemon.await_turn().await {
        tracing::info!("shutdown requested before our turn; exiting without serving");
        return Ok(());
    }
    let socket = daemon.socket_path();
    let mut resuming = false;
    loop {
        let mut tenure = match Tenure::open(&prepared).await {
            Ok(tenure) => tenure,
            Err(e) if resuming => {
                tracing::error!("cannot resume: {e:#}");
                return Err(e.context("resuming after a failed hand-over"));
            }
            Err(e) => return Err(e),
        };
        daemon.ready(format!("serving on {}", socket.display()));
        tracing::info!(socket = %socket.display(), "serving");
        match serve(&daemon, &mut tenure).await {
            Ending::Shutdown(kind) => return drain(&daemon, tenure, kind).await,
            Ending::ServerEnded(why) => {
                // Closed all the same, so every write let through is durable.
                if let Err(e) = tenure
                    .end(ShutdownKind::Fast, tokio::time::Instant::now(), async {})
                    .await
                {
                    tracing::error!("{e:#}");
                }
                anyhow::bail!("{why}");
            }
            Ending::Release => {
                release(&daemon, tenure).await?;
                if !released(&daemon).await {
                    return Ok(());
                }
                resuming = true;
            }
        }
    }
}

/// Phase 2: signals, the limits, the gRPC listener and the control service.
fn prepare(daemon: &mut Daemon) -> anyhow::Result<Prepared> {
    daemon
        .shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    let listener = daemon.grpc_listener()?;
    let socket = daemon.socket_path();
    let control = daemon.control_service(vec![format!("unix://{}", socket.display())]);
    Ok(Prepared {
        tree: daemon.tree_path(),
        listener,
        limits: Limits::from_settings(&daemon.settings.queue),
        backoff: Backoff::from_settings(&daemon.settings.queue),
        access: daemon.access.clone(),
        control,
        shutdown: daemon.shutdown.clone(),
    })
}

/// Why serving ended.
#[derive(Debug)]
enum Ending {
    /// A shutdown request.
    Shutdown(ShutdownKind),
    /// The supervisor's `RELEASE`.
    Release,
    /// The gRPC server ended by itself.
    ServerEnded(String),
}

/// Phase 5: serves until a shutdown request or `RELEASE`.
async fn serve(daemon: &Daemon, tenure: &mut Tenure) -> Ending {
    loop {
        tokio::select! {
            kind = daemon.shutdown.wait() => return Ending::Shutdown(kind),
            command = daemon.next_command() => match command {
                Command::Release => return Ending::Release,
                other => tracing::warn!(?other, "ignored while serving"),
            },
            why = tenure.server_ended() => return Ending::ServerEnded(why),
        }
    }
}

/// Phase 6: waits for the calls in flight (graceful, within the grace period; waiting
/// Reserve calls end at once) or for nothing (fast), then closes the tree.
async fn drain(daemon: &Daemon, tenure: Tenure, kind: ShutdownKind) -> anyhow::Result<()> {
    daemon.stopping();
    tracing::info!(?kind, "draining");
    let deadline = tokio::time::Instant::now() + daemon.settings.grace_period();
    tenure
        .end(kind, deadline, daemon.shutdown.wait_fast())
        .await
}

/// Phase 7, release: stops gRPC like a graceful drain (a fast shutdown meanwhile cuts it
/// short), closes the tree, then tells the supervisor.
async fn release(daemon: &Daemon, tenure: Tenure) -> anyhow::Result<()> {
    tracing::info!("releasing the queue's tree for a hand-over");
    let deadline = tokio::time::Instant::now() + daemon.settings.grace_period();
    if let Err(e) = tenure
        .end(
            ShutdownKind::Graceful,
            deadline,
            daemon.shutdown.wait_fast(),
        )
        .await
    {
        tracing::error!("cannot release the queue's tree: {e:#}");
        return Err(e.context("releasing the queue's tree"));
    }
    daemon.released();
    tracing::info!("released the queue's tree");
    Ok(())
}

/// Phase 7, released: waits for a shutdown (`false`: exit, there is nothing to drain) or
/// `RESUME` (`true`: serve again).
async fn released(daemon: &Daemon) -> bool {
    loop {
        tokio::select! {
            kind = daemon.shutdown.wait() => {
                daemon.stopping();
                tracing::info!(?kind, "shutdown while released: nothing to drain");
                return false;
            }
            command = daemon.next_command() => match command {
                Command::Resume => {
                    tracing::info!("resuming: the hand-over failed");
                    return true;
                }
                other => tracing::warn!(?other, "ignored while released"),
            },
        }
    }
}
