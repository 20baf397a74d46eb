//! The whole-stack upgrade (SIGQUIT, SIGHUP, `securelyctl reload`), without changing the
//! supervisor's PID:
//!
//! 1. **check** ([`check`]) the installed binaries and the settings file: the supervisor
//!    binary runs `-t` on the file, each daemon binary answers `--version`. A failure
//!    changes nothing;
//! 2. **carry**: stop the control server (the `Reload` call that asked has its answer),
//!    hold the stop signals (one arriving now waits, pending, for the next image), end
//!    supervision without stopping the daemons, and write the state (sockets, instances,
//!    this upgrade) into [`crate::carried::STATE_ENV`], every fd in it left open across
//!    the exec;
//! 3. **exec** ([`exec`]) the supervisor binary in place, with the same arguments;
//! 4. the new image **resumes** ([`resume()`]): it adopts the sockets (binding any new
//!    listener the settings ask for, closing any they dropped) and the instances, then
//!    **hands each daemon over** to its new binary, one at a time (see
//!    [`crate::handover`]).
//!
//! Should the exec itself fail, the same process adopts its own state back and serves on.
//! pingora's path, a second supervisor started with `-u`, is [`takeover`].

mod check;
mod exec;
mod peer;
mod resume;
pub mod takeover;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use securely_core::readiness::{Notice, Notifier};
use securely_core::rpc::RpcServer;
use securely_core::shutdown::Shutdown;

pub use resume::{continue_upgrade, resume};

use crate::carried::{CarriedState, ExportedSlot};
use crate::control;
use crate::events::Phase;
use crate::serving::Serving;
use crate::signals;
use crate::spawn;
use crate::stack::Stack;
use crate::trigger::{Refused, UpgradeTrigger};

/// After blocking the stop signals for an exec, how long a signal already caught gets to
/// reach the shutdown switch (after as many yields to the runtime's tasks).
const SIGNAL_SETTLE: Duration = Duration::from_millis(20);
const SIGNAL_SETTLE_YIELDS: usize = 8;

/// How an upgrade attempt ended, for the serve loop.
pub enum Upgraded {
    /// Nothing changed (check failed, busy, or a stop came first).
    Unchanged,
    /// The exec failed after the daemons were let go: adopt them again.
    ExecFailed(HashMap<String, ExportedSlot>),
    /// The sockets went to a `-u` supervisor: this one drains and exits.
    HandedAway,
}

/// Phases 1-3: check, carry, exec. `request` holds the one operation until the upgrade
/// is over in this image. Returns only if the process goes on in this image.
pub async fn upgrade(
    serving: &mut Serving,
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    notifier: &Notifier,
    control_server: &mut Option<RpcServer>,
    mut request: UpgradeTrigger,
) -> Upgraded {
    if let Some(kind) = shutdown.requested() {
        request.answer(Err(Refused::Stopping(kind)));
        return Upgraded::Unchanged;
    }
    let id = serving.upgrades.begin();
    // pingora's path: a `securely -u` waiting on upgrade_sock takes the sockets (signal
    // only: `securelyctl reload` always upgrades in place).
    if request.is_signal() {
        match takeover::hand_to_waiting_supervisor(serving, stack, shutdown).await {
            Ok(false) => {}
            Ok(true) => {
                // New control calls go to the new supervisor only.
                if let Some(server) = control_server.take() {
                    server.abort();
                }
                return Upgraded::HandedAway;
            }
            Err(e) => {
                tracing::error!(id, "upgrade failed, serving on: {e:#}");
                serving.upgrades.finish(Err(format!("{e:#}")));
                return Upgraded::Unchanged;
            }
        }
    }
    tracing::info!(
        id,
        "upgrade: checking the installed binaries and the settings"
    );
    notifier.notify(Notice::Reloading);

    // Phase 1: check.
    let daemons: Vec<PathBuf> = securely_core::DAEMONS
        .iter()
        .map(|d| spawn::binary_path(&serving.exe, d))
        .collect();
    let checked = tokio::select! {
        checked = check::check(&serving.exe, serving.conf.as_deref(), &daemons) => checked.map_err(Refused::from),
        kind = shutdown.wait() => Err(Refused::Stopping(kind)),
    };
    if let Err(refused) = checked {
        tracing::error!(id, "upgrade refused, nothing changed: {refused}");
        serving.upgrades.finish(Err(refused.to_string()));
        request.answer(Err(refused));
        notifier.notify(Notice::Ready);
        return Upgraded::Unchanged;
    }
    request.answer(Ok(id));

    // Phase 2: carry. The control server first: the Reload call gets its answer out.
    serving.upgrades.progress("re-executing the supervisor");
    // Watchers' streams end here, so they do not hold the control server up.
    serving.upgrades.events().phase(Phase::Reexecuting);
    if let Some(server) = control_server.take() {
        server
            .stop(tokio::time::Instant::now() + control::STOP_TIMEOUT)
            .await;
    }
    // Only this thread takes stop signals (see `signals::runtime`): from here on one
    // stays pending across the exec. One taken just before reaches the switch meanwhile.
    signals::block_stop_signals();
    for _ in 0..SIGNAL_SETTLE_YIELDS {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(SIGNAL_SETTLE).await;
    if let Some(kind) = shutdown.requested() {
        let _ = signals::unblock_stop_signals();
        serving
            .upgrades
            .finish(Err(format!("a {kind:?} stop came first")));
        return Upgraded::Unchanged;
    }
    let slots = stack.export().await;
    // A stop requested while the slots let go (or a slot that could not): no exec; the
    // daemons are taken back and the stop carried out.
    if shutdown.requested().is_some() || slots.len() != stack.slots().len() {
        return exec_failed(
            serving,
            slots,
            "a stop came while the daemons were handed over".into(),
        );
    }
    let sockets = match serving.sockets.carry() {
        Ok(sockets) => sockets,
        Err(e) => return exec_failed(serving, slots, format!("keeping the sockets open: {e}")),
    };
    let state = CarriedState {
        sockets,
        slots: slots.clone(),
        upgrade: serving.upgrades.snapshot(),
        events: serving.upgrades.events().carry(),
        previous_settings: serving.settings.to_yaml(),
        pid_file: serving.pid_file.path().to_path_buf(),
        uptime_ms: serving.started.elapsed().as_millis() as u64,
    };
    tracing::info!(id, exe = %serving.exe.display(), "upgrade: re-executing");

    // Phase 3: exec.
    let error = exec::exec(&serving.exe, &state);
    exec_failed(serving, slots, format!("{error:#}"))
}

fn exec_failed(
    serving: &Serving,
    slots: HashMap<String, ExportedSlot>,
    reason: String,
) -> Upgraded {
    tracing::error!("upgrade failed: {reason}; serving on with the running daemons");
    serving.sockets.keep_private();
    serving.upgrades.finish(Err(reason));
    let _ = signals::unblock_stop_signals();
    Upgraded::ExecFailed(slots)
}
