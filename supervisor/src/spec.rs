//! What a slot needs to start instances of its daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use securely_core::settings::Settings;

use crate::sockets::DaemonSockets;
use crate::spawn;

/// How to start instances of one daemon.
#[derive(Debug)]
pub struct SlotSpec {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    /// The daemon's executable.
    pub binary: PathBuf,
    /// The sockets handed to every instance.
    pub sockets: DaemonSockets,
    /// The daemon's sled tree (for status).
    pub tree: String,
    /// The resolved settings, as handed to the daemon.
    pub settings_yaml: Arc<String>,
    /// How long a draining instance may take.
    pub grace: Duration,
}

impl SlotSpec {
    /// The spec of daemon `name` under `settings` (`settings_yaml` is their YAML), with
    /// its binary beside the supervisor's `exe` and `sockets`.
    pub fn new(
        settings: &Settings,
        settings_yaml: &Arc<String>,
        exe: &Path,
        name: &'static str,
        sockets: DaemonSockets,
    ) -> Self {
        Self {
            name,
            binary: spawn::binary_path(exe, name),
            sockets,
            tree: settings.daemon_tree(name).display().to_string(),
            settings_yaml: settings_yaml.clone(),
            grace: settings.grace_period(),
        }
    }
}
