//! Phase: serve. Starts the stack on copies of the sockets, reports it ready (to `-d`'s
//! parent and to systemd), runs until asked to stop or to upgrade, then stops every
//! daemon and cleans up. An upgrade that ends in this image (refused, or its exec failed)
//! goes back to serving; a failed exec adopts the daemons it had let go.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use securely_core::readiness::{Notice, Notifier};
use securely_core::rpc::{Access, RpcServer};
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tonic::service::Routes;

use crate::control::{self, ControlService};
use crate::daemonize::StartupReport;
use crate::events::Phase;
use crate::serving::{Beginning, Serving};
use crate::signals;
use crate::stack::Stack;
use crate::trigger::{
    PENDING as PENDING_TRIGGERS, UpgradeTrigger, watch_signals as watch_upgrade_signals,
};
use crate::upgrade::{self, Upgraded};

/// How long start-up may take before `-d` gives up and reports failure.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves until the stack stops; returns once every daemon is gone.
pub async fn serve(mut serving: Serving, report: &mut StartupReport) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    let (trigger, mut triggers) = tokio::sync::mpsc::channel::<UpgradeTrigger>(PENDING_TRIGGERS);
    watch_upgrade_signals(serving.operations.clone(), trigger.clone())?;
    // The handlers are in place: let the signals held since start-up (or across the
    // exec) arrive (on this thread; the runtime's workers keep them blocked).
    signals::unblock_stop_signals()?;
    let notifier = Arc::new(Notifier::systemd());
    let access = Access::new(
        serving.settings.user.as_deref(),
        serving.settings.group.as_deref(),
    );

    loop {
        let stack = Arc::new(Stack::start(
            &serving.settings,
            serving
                .sockets
                .daemon_copies()
                .context("copying the sockets")?,
            &shutdown,
            &serving.exe,
            std::mem::take(&mut serving.adopted),
            serving.started,
            serving.upgrades.events(),
        ));
        let mut control_server = Some(start_control(
            &serving, &stack, &shutdown, &access, &trigger,
        )?);

        match std::mem::replace(&mut serving.next, Beginning::Start) {
            Beginning::ContinueUpgrade { guard, problem } => {
                tokio::spawn(upgrade::continue_upgrade(
                    stack.clone(),
                    serving.upgrades.clone(),
                    notifier.clone(),
                    guard,
                    problem,
                ));
            }
            Beginning::Start => {
                await_startup(&stack, &shutdown, &notifier, report).await;
                serving
                    .upgrades
                    .events()
                    .phase_from(&[Phase::Bootstrap], Phase::Running);
            }
        }

        // Run until asked to stop or to upgrade.
        let kind = loop {
            tokio::select! {
                biased;
                kind = shutdown.wait() => break Some(kind),
                Some(request) = triggers.recv() => {
                    let upgraded = upgrade::upgrade(
                        &mut serving, &stack, &shutdown, &notifier, &mut control_server, request,
                    )
                    .await;
                    match upgraded {
                        Upgraded::Unchanged => {
                            if control_server.is_none() {
                                control_server = Some(start_control(&serving, &stack, &shutdown, &access, &trigger)?);
                            }
                        }
                        Upgraded::ExecFailed(slots) => {
                            serving.adopted = slots;
                            break None;
                        }
                        Upgraded::HandedAway => {}
                    }
                }
            }
        };
        let Some(kind) = kind else {
            // Adopt our own daemons again and serve on.
            if let Some(server) = control_server.take() {
                server.abort();
            }
            continue;
        };

        // Phase: stop. The slots stop their daemons themselves.
        tracing::info!(?kind, "stopping");
        let events = serving.upgrades.events().clone();
        events.phase(match kind {
            ShutdownKind::Graceful => Phase::GracefulTerminate,
            ShutdownKind::Fast => Phase::FastShutdown,
        });
        notifier.notify(Notice::Stopping);
        stack.wait_stopped().await;
        events.phase(Phase::Terminated);

        // Clean up.
        if let Some(server) = control_server {
            server
                .stop(tokio::time::Instant::now() + control::STOP_TIMEOUT)
                .await;
        }
        drop(serving);
        tracing::info!("stopped");
        return Ok(());
    }
}

/// Serves the control service on a copy of the control socket.
fn start_control(
    serving: &Serving,
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    access: &Access,
    trigger: &tokio::sync::mpsc::Sender<UpgradeTrigger>,
) -> anyhow::Result<RpcServer> {
    let service = ControlService::new(
        stack.clone(),
        serving,
        shutdown.clone(),
        access.clone(),
        trigger.clone(),
    );
    let listener = serving
        .sockets
        .control
        .try_clone()
        .context("copying the control socket")?;
    Ok(RpcServer::start(
        listener,
        Routes::new(service.into_server()),
    ))
}

/// Waits for every daemon's first start, reporting the outcome to `-d`'s parent and to
/// systemd.
async fn await_startup(
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    notifier: &Arc<Notifier>,
    report: &mut StartupReport,
) {
    let startup = tokio::select! {
        result = stack.wait_all_ready(STARTUP_TIMEOUT) => result.map_err(anyhow::Error::from),
        kind = shutdown.wait() => Err(anyhow::anyhow!("{kind:?} shutdown requested during start-up")),
    };
    match startup {
        Ok(()) => {
            stack.announce_ready(notifier);
            report.ready();
        }
        Err(reason) if report.pending() => {
            tracing::error!("start-up failed: {reason}");
            report.failed(&reason.to_string());
            shutdown.request(ShutdownKind::Fast);
        }
        Err(reason) => {
            tracing::warn!("start-up incomplete: {reason}; still supervising");
            // Tell systemd once everything is up after all.
            let (stack, notifier, shutdown) = (stack.clone(), notifier.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        result = stack.wait_all_ready(STARTUP_TIMEOUT) => {
                            if result.is_ok() {
                                stack.announce_ready(&notifier);
                                break;
                            }
                            // Exported to a new image (or stopped): nothing to announce.
                            if stack.ended() {
                                break;
                            }
                        }
                        _ = shutdown.wait() => break,
                    }
                }
            });
        }
    }
}
