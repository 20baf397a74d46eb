//! What starts an upgrade: SIGQUIT, SIGHUP or the control service's `Reload`, each sent
//! to the serve loop as an [`UpgradeTrigger`].

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

/// A request to upgrade, answered with its id once the check passed.
pub struct UpgradeTrigger {
    /// Where the answer goes (none for a signal).
    pub reply: Option<oneshot::Sender<Result<u64, String>>>,
}

/// SIGQUIT (pingora's graceful upgrade) and SIGHUP (nginx's reload) both upgrade the
/// stack in place: the binaries and the settings file are read again.
pub fn watch_signals(trigger: mpsc::Sender<UpgradeTrigger>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, name) in [
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut signals = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        let trigger = trigger.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::info!("{name}: upgrading the stack");
                if trigger.try_send(UpgradeTrigger { reply: None }).is_err() {
                    tracing::warn!("{name}: an upgrade is already pending; ignored");
                }
            }
        });
    }
    Ok(())
}
