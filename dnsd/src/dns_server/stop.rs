//! The switch that tells the serving loops to stop taking new work: shared by
//! [`super::udp`], [`super::tcp`] and the server that starts them, so it sits below all
//! three.

use tokio::sync::watch;

/// Tells the serving loops to stop taking new work.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// A signal and the switch that raises it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (switch, signal) = watch::channel(false);
        (switch, Self(signal))
    }

    /// Resolves once the stop is requested (or its switch is gone).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
