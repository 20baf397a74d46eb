//! What `securelyctl status` shows of the supervisor's own records: each daemon's
//! [`SlotStatus`], and the last upgrade's [`UpgradeRecord`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use securely_proto::supervisor::{Event, ProcessStatus, UpgradeStatus};

use crate::events::{Events, Phase};

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

/// The last upgrade, as `securelyctl status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UpgradeRecord {
    /// Counts upgrades (0: none yet).
    pub id: u64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed, or what it did.
    pub detail: String,
    /// Milliseconds since it started, when it was carried across the exec.
    pub elapsed_ms: u64,
    #[serde(skip)]
    started: Option<Instant>,
}

impl UpgradeRecord {
    fn took_ms(&self) -> u64 {
        match (self.state.as_str(), self.started) {
            ("running", Some(started)) => started.elapsed().as_millis() as u64,
            _ => self.elapsed_ms,
        }
    }
}

/// The upgrade record, shared by the upgrade and the control service, and the events
/// hub the upgrade publishes to.
#[derive(Debug, Default)]
pub struct Upgrades {
    record: Mutex<UpgradeRecord>,
    events: Events,
}

impl Upgrades {
    /// Continues the record carried across the exec.
    pub fn carried(mut record: UpgradeRecord) -> Self {
        record.started = Some(Instant::now() - Duration::from_millis(record.elapsed_ms));
        let upgrades = Self {
            record: Mutex::new(record),
            events: Events::default(),
        };
        // The upgrade continues in this image.
        upgrades.events.phase(Phase::Upgrading);
        upgrades
    }

    /// The stack's events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn publish(&self, record: &UpgradeRecord) {
        self.events.publish(Event {
            kind: "upgrade".into(),
            state: record.state.clone(),
            id: record.id,
            detail: record.detail.clone(),
            ..Default::default()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpgradeRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new upgrade; returns its id.
    pub fn begin(&self) -> u64 {
        let mut record = self.lock();
        record.id += 1;
        record.state = "running".into();
        record.detail = "checking the binaries and the settings".into();
        record.started = Some(Instant::now());
        record.elapsed_ms = 0;
        self.events.phase(Phase::Upgrading);
        self.publish(&record);
        record.id
    }

    /// Notes progress.
    pub fn progress(&self, detail: impl Into<String>) {
        self.lock().detail = detail.into();
    }

    /// Ends the upgrade.
    pub fn finish(&self, result: Result<String, String>) {
        let mut record = self.lock();
        record.elapsed_ms = record
            .started
            .map(|s| s.elapsed().as_millis() as u64)
            .unwrap_or(0);
        let (state, detail) = match result {
            Ok(detail) => ("done", detail),
            Err(reason) => ("failed", reason),
        };
        record.state = state.into();
        record.detail = detail;
        self.publish(&record);
        self.events
            .phase_from(&[Phase::Upgrading, Phase::Reexecuting], Phase::Running);
    }

    /// The record, to carry across the exec.
    pub fn snapshot(&self) -> UpgradeRecord {
        let mut record = self.lock().clone();
        record.elapsed_ms = record.took_ms();
        record
    }

    /// The wire form.
    pub fn to_proto(&self) -> UpgradeStatus {
        let record = self.lock();
        UpgradeStatus {
            id: record.id,
            state: record.state.clone(),
            detail: record.detail.clone(),
            took_ms: record.took_ms(),
        }
    }
}
