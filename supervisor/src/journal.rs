//! The stack's events in the journal. Each event the hub publishes is also logged as a
//! record of target [`EVENT_TARGET`], which core's logging sends to the journal only
//! (under systemd), its message the event's plain line and its fields named as journal
//! fields, so that `journalctl -t securely SECURELY_EVENT=restart` finds every restart.

use securely_core::event_text;
use securely_core::logging::EVENT_TARGET;
use securely_proto::supervisor::Event;

/// An event's journal fields (each `securely_x` below is `SECURELY_X` in the journal).
#[derive(Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    /// `SECURELY_EVENT`: the kind (phase, daemon, daemon_phase, retired, restart,
    /// upgrade).
    pub event: &'a str,
    /// `SECURELY_STATE`.
    pub state: &'a str,
    /// `SECURELY_DAEMON`, for a daemon's events.
    pub daemon: Option<&'a str>,
    /// `SECURELY_PID`: the instance or process concerned.
    pub pid: Option<u32>,
    /// `SECURELY_SEQ`: the event's number.
    pub seq: u64,
    /// `SECURELY_UPGRADE_ID`: the upgrade of an `upgrade` event, or the one running
    /// while any other event was published.
    pub upgrade_id: Option<u64>,
    /// `SECURELY_RESTART_ID`: the restart of a `restart` event.
    pub restart_id: Option<u64>,
}

/// The fields of `event`, published while upgrade `upgrade` runs (0: none).
pub fn fields(event: &Event, upgrade: u64) -> Fields<'_> {
    let nonzero = |n: u64| (n != 0).then_some(n);
    let upgrade_id = match event.kind.as_str() {
        "upgrade" => nonzero(event.id),
        _ => nonzero(upgrade),
    };
    Fields {
        event: &event.kind,
        state: &event.state,
        daemon: (!event.daemon.is_empty()).then_some(event.daemon.as_str()),
        pid: (event.pid != 0).then_some(event.pid),
        seq: event.seq,
        upgrade_id,
        restart_id: (event.kind == "restart").then_some(event.id),
    }
}

/// Logs `event`, published while upgrade `upgrade` runs (0: none), for the journal.
pub fn record(event: &Event, upgrade: u64) {
    let f = fields(event, upgrade);
    tracing::info!(
        target: EVENT_TARGET,
        securely_event = f.event,
        securely_state = f.state,
        securely_daemon = f.daemon,
        securely_pid = f.pid,
        securely_seq = f.seq,
        securely_upgrade_id = f.upgrade_id,
        securely_restart_id = f.restart_id,
        "{}",
        event_text::line(event)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, daemon: &str, state: &str, pid: u32, id: u64) -> Event {
        Event {
            seq: 7,
            kind: kind.into(),
            daemon: daemon.into(),
            state: state.into(),
            pid,
            id,
            ..Default::default()
        }
    }

    #[test]
    fn each_event_names_its_kind_daemon_number_and_operation() {
        let restart = event("restart", "dnsd", "done", 42, 3);
        assert_eq!(
            fields(&restart, 0),
            Fields {
                event: "restart",
                state: "done",
                daemon: Some("dnsd"),
                pid: Some(42),
                seq: 7,
                upgrade_id: None,
                restart_id: Some(3),
            }
        );
        // An upgrade's own events carry its id; the others during it, the one running.
        let upgrade = event("upgrade", "", "running", 0, 2);
        let f = fields(&upgrade, 2);
        assert_eq!((f.upgrade_id, f.daemon, f.pid), (Some(2), None, None));
        let phase = event("daemon_phase", "queued", "opening", 9, 0);
        let f = fields(&phase, 2);
        assert_eq!(
            (f.event, f.upgrade_id, f.restart_id),
            ("daemon_phase", Some(2), None)
        );
        assert_eq!(fields(&phase, 0).upgrade_id, None);
    }
}
