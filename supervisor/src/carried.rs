//! What one image of the supervisor hands the next across an upgrade's exec: the
//! sockets and each daemon's instances by fd and pid, the upgrade in progress, the
//! events' numbers, the settings it ran with. It travels as JSON in [`STATE_ENV`]; every fd it names is left
//! open (without close-on-exec) for the next image.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;

use anyhow::Context;

use crate::events::CarriedEvents;
use crate::sockets::CarriedSockets;
use crate::upgrades::UpgradeRecord;

/// The variable carrying the state across the exec.
pub const STATE_ENV: &str = "SECURELY_UPGRADE_STATE";

/// What one image of the supervisor hands the next. Every field has a default, so an
/// image reads the state of an older one (fields it added are then empty).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CarriedState {
    /// Every listening socket, open by number.
    pub sockets: CarriedSockets,
    /// Each daemon's instances, by daemon.
    pub slots: HashMap<String, ExportedSlot>,
    /// The upgrade in progress.
    pub upgrade: UpgradeRecord,
    /// Where the events' numbers are (0 from an image that did not carry them).
    pub events: CarriedEvents,
    /// The settings the stack ran with, as YAML (used again if the new ones cannot be).
    pub previous_settings: String,
    /// The pid file (already written, same pid).
    pub pid_file: PathBuf,
    /// Milliseconds the supervisor had been up.
    pub uptime_ms: u64,
}

impl CarriedState {
    /// The state left by the previous image, if this process is one's exec.
    pub fn take_from_env() -> Option<anyhow::Result<Self>> {
        let text = crate::sys::take_env(STATE_ENV)?;
        Some(serde_json::from_str(&text).context("reading the state handed across the exec"))
    }
}

/// A slot's instances, handed across an exec of the supervisor.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ExportedSlot {
    /// The serving (or starting) instance.
    pub current: Option<Exported>,
    /// Replaced instances still draining.
    pub draining: Vec<u32>,
    /// Instances started after the first.
    pub restarts: u32,
    /// How the last instance ended.
    pub last_exit: String,
}

/// What survives a re-exec of the supervisor of one instance: the pid and the
/// notification socket.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Exported {
    /// The instance's pid (still a child of the supervisor after its exec).
    pub pid: u32,
    /// The supervisor's end of the notification socket, kept open across the exec.
    pub notify_fd: RawFd,
}
