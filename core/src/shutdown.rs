//! Shutdown requests, whatever their source: SIGTERM, SIGINT, a `Drain` RPC, or the
//! supervisor going away.

use std::sync::Arc;

use tokio::sync::watch;

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Stop accepting, finish in-flight work within the grace period (SIGTERM).
    Graceful,
    /// Stop now (SIGINT).
    Fast,
}

/// A shared, cloneable shutdown switch. The first request wins, except that a fast
/// request overrides a graceful one.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<ShutdownKind>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A switch nobody has pulled yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Requests a shutdown.
    pub fn request(&self, kind: ShutdownKind) {
        self.tx.send_if_modified(|current| match (*current, kind) {
            (None, _) | (Some(ShutdownKind::Graceful), ShutdownKind::Fast) => {
                *current = Some(kind);
                true
            }
            _ => false,
        });
    }

    /// The request so far, if any.
    pub fn requested(&self) -> Option<ShutdownKind> {
        *self.tx.borrow()
    }

    /// Waits for a request.
    pub async fn wait(&self) -> ShutdownKind {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(kind) = *rx.borrow_and_update() {
                return kind;
            }
            if rx.changed().await.is_err() {
                return ShutdownKind::Fast;
            }
        }
    }

    /// Waits for a fast request (to cut a graceful drain short).
    pub async fn wait_fast(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            if *rx.borrow_and_update() == Some(ShutdownKind::Fast) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Turns SIGTERM into a graceful and SIGINT into a fast request, for as long as the
    /// current tokio runtime lives.
    pub fn watch_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = term.recv() => this.request(ShutdownKind::Graceful),
                    Some(()) = int.recv() => this.request(ShutdownKind::Fast),
                    else => break,
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fast_overrides_graceful_but_not_the_reverse() {
        let s = Shutdown::new();
        assert_eq!(s.requested(), None);
        s.request(ShutdownKind::Graceful);
        assert_eq!(s.wait().await, ShutdownKind::Graceful);
        s.request(ShutdownKind::Fast);
        s.wait_fast().await;
        s.request(ShutdownKind::Graceful);
        assert_eq!(s.requested(), Some(ShutdownKind::Fast));
    }
}
