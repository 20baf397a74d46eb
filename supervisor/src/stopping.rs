//! Stopping one instance: told to drain (SIGTERM) or to stop fast (SIGINT), and killed
//! when it overstays. A fast stop of the stack during a drain turns it into a fast stop.

use std::time::Duration;

use rustix::process::Signal;
use securely_core::shutdown::{Shutdown, ShutdownKind};

use crate::child::{self, Instance};

/// How long an instance told to stop fast (SIGINT) gets before SIGKILL.
pub const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time after the grace period before a draining instance is killed.
pub const GRACE_MARGIN: Duration = Duration::from_secs(1);

/// Asks `instance` to stop as `kind` says (SIGTERM to drain within `grace`, SIGINT to
/// stop fast) and waits for it; returns how it ended.
pub async fn stop(
    instance: &Instance,
    kind: ShutdownKind,
    grace: Duration,
    shutdown: &Shutdown,
) -> String {
    let patience = match kind {
        ShutdownKind::Graceful => {
            instance.signal(Signal::TERM);
            grace + GRACE_MARGIN
        }
        ShutdownKind::Fast => {
            instance.signal(Signal::INT);
            FAST_STOP_TIMEOUT
        }
    };
    drain(instance, patience, shutdown).await
}

/// Stops `instance` fast (SIGINT, SIGKILL after [`FAST_STOP_TIMEOUT`]) and reaps it.
pub async fn stop_fast(instance: &Instance) {
    instance.signal(Signal::INT);
    if tokio::time::timeout(FAST_STOP_TIMEOUT, instance.wait())
        .await
        .is_err()
    {
        let _ = instance.kill().await;
    }
}

/// Waits for an instance already told to stop, for at most `patience`; a fast stop of
/// the stack meanwhile sends SIGINT and shortens the wait; an instance that overstays is
/// killed. Its notices are read meanwhile, so the phases it reports are published.
/// Returns how it ended.
pub async fn drain(instance: &Instance, patience: Duration, shutdown: &Shutdown) -> String {
    let mut deadline = tokio::time::Instant::now() + patience;
    let mut hurried = false;
    let mut notices_open = true;
    let exit = loop {
        tokio::select! {
            exit = instance.wait() => break Some(exit),
            // Read for the phases it reports as it stops (published as they are read).
            notice = instance.next_notice(), if notices_open => notices_open = notice.is_some(),
            () = tokio::time::sleep_until(deadline) => break None,
            () = shutdown.wait_fast(), if !hurried => {
                hurried = true;
                instance.signal(Signal::INT);
                deadline = deadline.min(tokio::time::Instant::now() + FAST_STOP_TIMEOUT);
            }
        }
    };
    let how = match exit {
        Some(exit) => child::describe_exit(exit),
        None => {
            tracing::warn!(
                pid = instance.pid,
                "still running after its stop time; killing"
            );
            let _ = instance.kill().await;
            "killed after overstaying its stop".into()
        }
    };
    instance.flush_notices().await;
    how
}
