//! The whole stack: one [`Slot`] per daemon, started together and stopped together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use securely_core::settings::Settings;
use securely_core::shutdown::ShutdownKind;

use crate::child;
use crate::slot::{Slot, SlotSpec};
use crate::sockets::DaemonSockets;
use crate::state::DaemonState;

/// Every daemon under supervision.
#[derive(Debug)]
pub struct Stack {
    slots: Vec<Slot>,
    started: Instant,
}

impl Stack {
    /// Starts every daemon with its sockets.
    pub fn start(
        settings: &Settings,
        daemons: Vec<(&'static str, DaemonSockets)>,
    ) -> anyhow::Result<Self> {
        let settings_yaml = Arc::new(settings.to_yaml());
        let mut slots = Vec::new();
        for (name, sockets) in daemons {
            let spec = SlotSpec {
                name,
                binary: child::binary_path(name)?,
                sockets,
                tree: settings.daemon_tree(name).display().to_string(),
                settings_yaml: settings_yaml.clone(),
                grace: settings.grace_period(),
            };
            slots.push(Slot::start(spec));
        }
        Ok(Self {
            slots,
            started: Instant::now(),
        })
    }

    /// The slots, in start order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// When the stack started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The slot of daemon `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Waits until every daemon is ready. Fails at the first daemon whose first instance
    /// fails, or after `timeout`.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<(), String> {
        let all = async {
            for slot in &self.slots {
                let mut watch = slot.watch();
                loop {
                    {
                        let status = watch.borrow_and_update();
                        if status.state == DaemonState::Ready {
                            break;
                        }
                        if status.consecutive_failures > 0 {
                            return Err(format!("{}: {}", slot.name, status.last_exit));
                        }
                    }
                    if watch.changed().await.is_err() {
                        return Err(format!("{}: supervision ended", slot.name));
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
                Err(format!(
                    "not ready within {}s: {}",
                    timeout.as_secs(),
                    late.join(", ")
                ))
            })
    }

    /// Stops every daemon at once and waits until all are gone.
    pub async fn stop(&self, kind: ShutdownKind) {
        let mut stops = tokio::task::JoinSet::new();
        for slot in self.slots.iter().cloned() {
            stops.spawn(async move { slot.stop(kind).await });
        }
        while stops.join_next().await.is_some() {}
    }

    /// Turns a graceful stop in progress into a fast one: SIGINT to every instance.
    pub fn hurry(&self) {
        for slot in &self.slots {
            let pid = slot.status().pid;
            if pid != 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
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
}
