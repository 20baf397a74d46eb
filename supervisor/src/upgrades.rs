//! The last whole-stack upgrade, as `securelyctl status` shows it ([`UpgradeRecord`]),
//! shared by the upgrade and the control service ([`Upgrades`]), which also holds the
//! stack's events hub.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use securely_proto::supervisor::{Event, UpgradeStatus};

use crate::events::{CarriedEvents, Events, Phase};

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
    /// Continues the record and the events' numbering carried across the exec.
    pub fn carried(mut record: UpgradeRecord, events: CarriedEvents) -> Self {
        record.started = Some(Instant::now() - Duration::from_millis(record.elapsed_ms));
        let events = Events::carried(events);
        if record.state == "running" {
            events.upgrade_running(record.id);
        }
        let upgrades = Self {
            record: Mutex::new(record),
            events,
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
        self.events.upgrade_running(record.id);
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
        self.events.upgrade_running(0);
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
