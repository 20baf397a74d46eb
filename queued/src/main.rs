//! securely-queued: Securely's durable, at-least-once job queue on sled.
//!
//! The daemon runs in named phases:
//! 1. **start**: command line, settings, logging, inherited sockets ([`Daemon::start`]);
//! 2. **prepare**: the async runtime and the [`QueueTenant`] (limits, backoff, access):
//!    everything that needs no tree. queued serves nothing without its tree, so it has no
//!    data plane ([`NoDataPlane`]);
//! 3. the rest is the lifecycle driver's ([`securely_core::lifecycle`]): the turn, the
//!    tenures (the tree, the log, the engine, the reaper, the checkpoints and the gRPC service, see
//!    [`tenure`]), the hand-over (`RELEASE` ends the tenure as a drain does; `RESUME`
//!    opens a new one from the tree) and the stop (waiting Reserve calls end at once,
//!    calls in flight finish within the grace period, then the reaper, the checkpoints and
//!    the log's writer stop and sled is flushed and closed; SIGINT skips the wait).

#![forbid(unsafe_code)]

mod backoff;
mod checkpoint;
mod engine;
mod log;
mod reaper;
mod service;
mod store;
mod tenure;
mod validate;
mod wakeups;

use std::process::ExitCode;

use anyhow::Context;
use securely_core::daemon::Daemon;
use securely_core::lifecycle;
use securely_core::tenure::NoDataPlane;

use crate::backoff::Backoff;
use crate::tenure::QueueTenant;
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

/// Phases 2 and 3.
fn run(mut daemon: Daemon) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("queued")
        .build()
        .context("starting the async runtime")?;
    let mut tenant = QueueTenant {
        tree: daemon.tree_path(),
        limits: Limits::from_settings(&daemon.settings.queue),
        backoff: Backoff::from_settings(&daemon.settings.queue),
        access: daemon.access.clone(),
        shutdown: daemon.shutdown.clone(),
        socket: daemon.socket_path(),
    };
    runtime.block_on(lifecycle::run(&mut daemon, &mut tenant, &mut NoDataPlane))?;
    Ok(())
}
