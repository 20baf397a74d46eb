//! The whole stack: one [`Slot`] per daemon, started together and stopped together.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use securely_core::readiness::{Notice, Notifier};
use securely_core::settings::Settings;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tokio::task::JoinHandle;

use crate::carried::ExportedSlot;
use crate::events::Events;
use crate::slot::Slot;
use crate::sockets::DaemonSockets;
use crate::spec::SlotSpec;
use crate::state::DaemonState;

/// Why the stack is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// A daemon's instance failed before it was ready.
    #[error("{daemon}: {last_exit}")]
    Failed {
        /// The daemon.
        daemon: &'static str,
        /// How its instance ended.
        last_exit: String,
    },
    /// Supervision of a daemon ended (the stack stopped or was exported).
    #[error("{0}: supervision ended")]
    Ended(&'static str),
    /// Not every daemon was ready in time.
    #[error("not ready within {seconds}s: {late}")]
    Late {
        /// The time they had.
        seconds: u64,
        /// The daemons not ready, comma-separated.
        late: String,
    },
}

/// Every daemon under supervision.
#[derive(Debug)]
pub struct Stack {
    slots: Vec<Slot>,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
}

impl Stack {
    /// Starts every daemon with its sockets. The slots stop their daemons when
    /// `shutdown` is pulled; a slot that panics pulls it (fast), since its daemon would
    /// otherwise run unsupervised.
    /// `adopted` are the instances a previous image of the supervisor ran, by daemon.
    pub fn start(
        settings: &Settings,
        daemons: Vec<(&'static str, DaemonSockets)>,
        shutdown: &Shutdown,
        exe: &Path,
        mut adopted: HashMap<String, ExportedSlot>,
        started: Instant,
        events: &Events,
    ) -> Self {
        let settings_yaml = Arc::new(settings.to_yaml());
        let mut slots = Vec::new();
        let mut tasks = Vec::new();
        for (name, sockets) in daemons {
            let spec = SlotSpec::new(settings, &settings_yaml, exe, name, sockets);
            let (slot, task) =
                Slot::start(spec, shutdown.clone(), adopted.remove(name), events.clone());
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = task.await {
                    tracing::error!(daemon = name, "supervision failed: {e}; stopping the stack");
                    shutdown.request(ShutdownKind::Fast);
                }
            }));
            slots.push(slot);
        }
        Self {
            slots,
            tasks: tokio::sync::Mutex::new(tasks),
            started,
        }
    }

    /// Ends supervision without stopping the daemons, for an exec of the supervisor:
    /// their instances, by daemon.
    pub async fn export(&self) -> HashMap<String, ExportedSlot> {
        let mut exported = HashMap::new();
        for slot in &self.slots {
            match slot.export().await {
                Ok(state) => {
                    exported.insert(slot.name.to_string(), state);
                }
                Err(e) => tracing::warn!(daemon = slot.name, "cannot export: {e}"),
            }
        }
        self.wait_stopped().await;
        exported
    }

    /// The slots, in start order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// When the supervisor started (its first image, across upgrades).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether supervision has ended for some daemon (the stack stopped or was exported).
    pub fn ended(&self) -> bool {
        self.slots.iter().any(|s| s.ended())
    }

    /// The slot of daemon `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Waits until every daemon is ready. Fails at the first daemon whose instance
    /// fails before it is ready, or after `timeout`.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<(), NotReady> {
        let all = async {
            for slot in &self.slots {
                let mut watch = slot.watch();
                let failures_before = watch.borrow().consecutive_failures;
                loop {
                    {
                        let status = watch.borrow_and_update();
                        if status.state == DaemonState::Ready {
                            break;
                        }
                        if status.consecutive_failures > failures_before {
                            return Err(NotReady::Failed {
                                daemon: slot.name,
                                last_exit: status.last_exit.clone(),
                            });
                        }
                    }
                    if watch.changed().await.is_err() {
                        return Err(NotReady::Ended(slot.name));
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, all)
            .await
            .unwrap_or_else(|_| {
                let late: Vec<_> = self
                    .slots
                    .iter()
                    .filter(|s| s.status().state != DaemonState::Ready)
                    .map(|s| s.name)
                    .collect();
                Err(NotReady::Late {
                    seconds: timeout.as_secs(),
                    late: late.join(", "),
                })
            })
    }

    /// Waits until every slot has stopped its daemon (after the shutdown was pulled).
    pub async fn wait_stopped(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().await);
        for task in tasks {
            let _ = task.await;
        }
    }

    /// A one-line summary, e.g. "3/3 daemons ready".
    pub fn summary(&self) -> String {
        let ready = self
            .slots
            .iter()
            .filter(|s| s.status().state == DaemonState::Ready)
            .count();
        format!("{ready}/{} daemons ready", self.slots.len())
    }

    /// Logs that the stack serves and tells systemd.
    pub fn announce_ready(&self, notifier: &Notifier) {
        tracing::info!(pid = std::process::id(), "{}", self.summary());
        notifier.notify(Notice::Status(self.summary()));
        notifier.notify(Notice::Ready);
    }
}
