//! What `securelyctl status` shows of each daemon: its [`SlotStatus`] (the last upgrade's
//! record is in [`crate::upgrades`]).

use std::time::Instant;

use securely_proto::supervisor::ProcessStatus;

/// A daemon's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// Started, not yet ready.
    Starting,
    /// Serving.
    Ready,
    /// Finishing in-flight work before it exits.
    Draining,
    /// Waiting before the next start after a failure.
    Backoff,
    /// In a crash loop (still retried, at the capped backoff).
    Failed,
    /// Stopped on request.
    Stopped,
}

impl DaemonState {
    /// The lowercase name used in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Ready => "ready",
            DaemonState::Draining => "draining",
            DaemonState::Backoff => "backoff",
            DaemonState::Failed => "failed",
            DaemonState::Stopped => "stopped",
        }
    }
}

/// The supervisor's record of one daemon.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    /// Current state.
    pub state: DaemonState,
    /// The current instance's pid, 0 when none runs.
    pub pid: u32,
    /// When the current instance became ready.
    pub ready_since: Option<Instant>,
    /// Instances started after the first.
    pub restarts: u32,
    /// How the last instance ended.
    pub last_exit: String,
    /// Failed starts or early exits in a row.
    pub consecutive_failures: u32,
    /// When the next start is due (in backoff).
    pub next_start_at: Option<Instant>,
    /// The sockets handed to the daemon.
    pub listeners: Vec<String>,
    /// The daemon's sled tree.
    pub tree: String,
    /// The daemon's gRPC socket.
    pub socket: String,
    /// The daemon's last `STATUS=` line.
    pub note: String,
    /// Replaced instances still draining.
    pub draining: Vec<u32>,
}

impl SlotStatus {
    /// A daemon about to start for the first time.
    pub fn new(listeners: Vec<String>, tree: String, socket: String) -> Self {
        Self {
            state: DaemonState::Starting,
            pid: 0,
            ready_since: None,
            restarts: 0,
            last_exit: String::new(),
            consecutive_failures: 0,
            next_start_at: None,
            listeners,
            tree,
            socket,
            note: String::new(),
            draining: Vec::new(),
        }
    }

    /// Moves to `state`.
    pub fn enter(&mut self, state: DaemonState) {
        self.state = state;
        if state != DaemonState::Backoff && state != DaemonState::Failed {
            self.next_start_at = None;
        }
    }

    /// The wire form, for daemon `name`.
    pub fn to_proto(&self, name: &str) -> ProcessStatus {
        let now = Instant::now();
        ProcessStatus {
            name: name.to_string(),
            state: self.state.as_str().to_string(),
            pid: self.pid,
            uptime_ms: self
                .ready_since
                .map(|t| now.duration_since(t).as_millis() as u64)
                .unwrap_or(0),
            restarts: self.restarts,
            listeners: self.listeners.clone(),
            tree: self.tree.clone(),
            socket: self.socket.clone(),
            last_exit: self.last_exit.clone(),
            consecutive_failures: self.consecutive_failures,
            next_start_in_ms: self
                .next_start_at
                .map(|t| t.saturating_duration_since(now).as_millis() as u64)
                .unwrap_or(0),
            draining_pids: self.draining.clone(),
        }
    }
}
