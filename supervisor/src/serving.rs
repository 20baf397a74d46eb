//! What the supervisor holds while it serves: the settings, the sockets, the pid file,
//! its own binary. The serve loop starts each stack from it, and an upgrade hands it to
//! the next image (or, with `-u`, to another supervisor).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use securely_core::settings::Settings;

use crate::carried::ExportedSlot;
use crate::operation::{OperationGuard, Operations};
use crate::pidfile::PidFile;
use crate::sockets::StackSockets;
use crate::upgrades::Upgrades;

/// Everything the serve phase runs with.
#[derive(Debug)]
pub struct Serving {
    /// The resolved settings.
    pub settings: Settings,
    /// The originals; the slots and the control server get copies.
    pub sockets: StackSockets,
    /// The pid file, removed at exit unless handed on.
    pub pid_file: PidFile,
    /// The supervisor binary to re-execute on an upgrade.
    pub exe: PathBuf,
    /// The settings file (`-c`), read again on an upgrade.
    pub conf: Option<PathBuf>,
    /// The last upgrade, as status shows it, and the stack's events.
    pub upgrades: Arc<Upgrades>,
    /// The one restart or upgrade that may run at a time, across stacks.
    pub operations: Operations,
    /// Instances handed across an exec, to adopt.
    pub adopted: HashMap<String, ExportedSlot>,
    /// How the next stack begins.
    pub next: Beginning,
    /// When the supervisor started (its first image).
    pub started: Instant,
}

/// How a stack begins.
#[derive(Debug)]
pub enum Beginning {
    /// Every daemon starts (or is adopted back after a failed exec): wait until all are
    /// ready and report it.
    Start,
    /// After an upgrade's exec: hand every adopted daemon over to its new binary, or,
    /// with a `problem`, report why the new settings could not be used. `guard` is the
    /// upgrade's, claimed before anything could ask for another operation.
    ContinueUpgrade {
        /// The right to run the rest of the upgrade.
        guard: OperationGuard,
        /// Why the new settings could not be used, if they could not.
        problem: Option<String>,
    },
}
