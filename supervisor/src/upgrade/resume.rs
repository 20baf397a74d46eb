//! Phase 4 of an upgrade, in the image the exec started: **resume** with the sockets and
//! daemons handed across, then hand every daemon over to its new binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use securely_core::readiness::Notifier;
use securely_core::settings::Settings;

use crate::carried::CarriedState;
use crate::operation::{Operation, OperationGuard, Operations};
use crate::pidfile::PidFile;
use crate::serving::{Beginning, Serving};
use crate::sockets::StackSockets;
use crate::stack::Stack;
use crate::upgrades::Upgrades;

/// Takes over what the previous image carried: its sockets (adopted under the settings
/// file read again, or under the previous settings if the new ones cannot be used, which
/// fails the upgrade), its pid file, its daemons, its upgrade record and its events' numbers. No
/// daemonizing, no new pid file, no privilege change: the process is the same.
pub fn resume(
    conf: Option<PathBuf>,
    exe: PathBuf,
    carried: CarriedState,
) -> anyhow::Result<Serving> {
    let fresh = crate::load::load_valid(conf.as_deref());
    let (settings, sockets, problem) = match fresh
        .and_then(|settings| Ok((StackSockets::adopt(&settings, &carried.sockets)?, settings)))
    {
        Ok((sockets, settings)) => (settings, sockets, None),
        Err(e) => {
            let previous =
                Settings::from_yaml(&carried.previous_settings, "the previous settings", |_| {})
                    .context("reading the previous settings")?
                    .resolve();
            let sockets = StackSockets::adopt(&previous, &carried.sockets)
                .context("taking back the previous sockets")?;
            (
                previous,
                sockets,
                Some(format!("the new settings cannot be used: {e:#}")),
            )
        }
    };
    carried.sockets.close();
    // Claimed before the control server or the signal handlers run: nothing else can
    // start until every daemon has been handed over.
    let (operations, guard) = Operations::claimed(Operation::Upgrade);
    securely_core::logging::init(
        "securely",
        settings.error_log.as_deref(),
        securely_core::logging::DEFAULT_FILTER,
    );
    tracing::info!(
        pid = std::process::id(),
        "re-executed; adopting the daemons"
    );
    Ok(Serving {
        settings,
        sockets,
        pid_file: PidFile::adopt(carried.pid_file),
        exe,
        conf,
        upgrades: Arc::new(Upgrades::carried(carried.upgrade, carried.events)),
        operations,
        adopted: carried.slots,
        next: Beginning::ContinueUpgrade { guard, problem },
        started: Instant::now() - Duration::from_millis(carried.uptime_ms),
    })
}

/// Hands every daemon over to its new binary, one at a time, and records the result.
/// `guard` is held until then.
pub async fn continue_upgrade(
    stack: Arc<Stack>,
    upgrades: Arc<Upgrades>,
    notifier: Arc<Notifier>,
    guard: OperationGuard,
    problem: Option<String>,
) {
    let _guard = guard;
    if let Some(problem) = problem {
        tracing::error!("upgrade failed: {problem}");
        upgrades.finish(Err(problem));
        stack.announce_ready(&notifier);
        return;
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for slot in stack.slots() {
        upgrades.progress(format!("handing {} over to its new binary", slot.name));
        match slot.replace(None).await {
            Ok(replaced) => done.push(format!(
                "{} {} -> {}",
                slot.name, replaced.old_pid, replaced.pid
            )),
            Err(reason) => failed.push(format!("{}: {reason}", slot.name)),
        }
    }
    let result = if failed.is_empty() {
        tracing::info!("upgrade done: {}", done.join(", "));
        Ok(format!("upgraded: {}", done.join(", ")))
    } else {
        tracing::error!("upgrade failed: {}", failed.join("; "));
        Err(failed.join("; "))
    };
    upgrades.finish(result);
    stack.announce_ready(&notifier);
}
