//! The stack's events, for `Supervisor.Watch`: one bounded broadcast channel, fed from
//! one place. Each daemon's record goes through a [`SlotRecorder`], which publishes what
//! a change changed; the supervisor's phase, restarts and upgrades are published with
//! [`Events::publish`]. A watcher that falls behind misses events (it is told how many),
//! it never holds the supervisor up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use securely_core::readiness::{DaemonPhase, phase_name};
use securely_proto::supervisor::Event;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::state::{DaemonState, SlotStatus};

/// Events kept for watchers that have not read them yet (beyond that, the slowest miss
/// the oldest), and for watchers that continue after an event they saw.
pub const BACKLOG: usize = 256;

/// The supervisor's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting its daemons.
    Bootstrap,
    /// Every daemon was started; serving.
    Running,
    /// Stopping, letting daemons drain (SIGTERM, `stop`).
    GracefulTerminate,
    /// Stopping fast (SIGINT, `stop --fast`).
    FastShutdown,
    /// Upgrading in place.
    Upgrading,
    /// Re-executing itself for an upgrade: watchers' streams end here.
    Reexecuting,
    /// Every daemon is gone.
    Terminated,
}

impl Phase {
    /// The name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bootstrap => "bootstrap",
            Phase::Running => "running",
            Phase::GracefulTerminate => "graceful_terminate",
            Phase::FastShutdown => "fast_shutdown",
            Phase::Upgrading => "upgrading",
            Phase::Reexecuting => "re_executing",
            Phase::Terminated => "terminated",
        }
    }
}

struct Inner {
    seq: u64,
    phase: Phase,
    restarts: u64,
    sender: broadcast::Sender<Event>,
    /// The last [`BACKLOG`] events, for a watcher that continues after one it saw.
    recent: VecDeque<Event>,
    /// The upgrade running (0: none), named in the journal with every event.
    upgrade: u64,
}

/// What the next image of the supervisor continues from after an upgrade's exec.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CarriedEvents {
    /// The last event's number.
    pub seq: u64,
    /// Restarts numbered so far.
    pub restarts: u64,
}

/// The event hub: numbers events and sends them to every watcher.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::carried(CarriedEvents::default())
    }
}

impl Events {
    /// A hub that numbers on from what a previous image carried across the exec.
    pub fn carried(carried: CarriedEvents) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                seq: carried.seq,
                phase: Phase::Bootstrap,
                restarts: carried.restarts,
                sender: broadcast::channel(BACKLOG).0,
                recent: VecDeque::with_capacity(BACKLOG),
                upgrade: 0,
            })),
        }
    }

    /// What the next image continues from.
    pub fn carry(&self) -> CarriedEvents {
        let inner = self.lock();
        CarriedEvents {
            seq: inner.seq,
            restarts: inner.restarts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers, stamps and sends `event` (its `seq` and `unix_ms` are set here).
    pub fn publish(&self, event: Event) {
        publish_locked(&mut self.lock(), event);
    }

    /// Moves the supervisor to `phase` (no event if it is there already).
    pub fn phase(&self, phase: Phase) {
        let mut inner = self.lock();
        if inner.phase != phase {
            inner.phase = phase;
            publish_locked(&mut inner, phase_event(phase));
        }
    }

    /// Moves the supervisor from one of the phases `from` to `to` (nothing if it is
    /// elsewhere).
    pub fn phase_from(&self, from: &[Phase], to: Phase) {
        let mut inner = self.lock();
        if from.contains(&inner.phase) {
            inner.phase = to;
            publish_locked(&mut inner, phase_event(to));
        }
    }

    /// Names upgrade `id` (0: none) as the one running, for the journal.
    pub fn upgrade_running(&self, id: u64) {
        self.lock().upgrade = id;
    }

    /// Numbers a new restart.
    pub fn next_restart_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.restarts += 1;
        inner.restarts
    }

    /// A new watcher: what it starts with, and a receiver of every later event. Both
    /// are taken together, so nothing is missed or seen twice. It starts with the events
    /// after `after_seq` when that is an event this hub numbered and still holds (or
    /// numbered last); else, with the current state (the supervisor's phase, then each of
    /// `slots`' status, by name), after a "lagged" event if events after `after_seq` are
    /// lost.
    pub fn watch(
        &self,
        after_seq: u64,
        slots: &[(&'static str, watch::Receiver<SlotStatus>)],
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = self.lock();
        let receiver = inner.sender.subscribe();
        let oldest_held = inner.recent.front().map_or(inner.seq + 1, |e| e.seq);
        if after_seq != 0 && after_seq <= inner.seq && after_seq + 1 >= oldest_held {
            let since: Vec<Event> = inner
                .recent
                .iter()
                .filter(|e| e.seq > after_seq)
                .cloned()
                .collect();
            return (since, receiver);
        }
        let stamp = |mut event: Event| {
            event.seq = inner.seq;
            event.unix_ms = unix_ms(SystemTime::now());
            event
        };
        let mut start = Vec::new();
        if after_seq != 0 && after_seq < inner.seq {
            start.push(stamp(Event {
                kind: "lagged".into(),
                missed: inner.seq - after_seq,
                ..Default::default()
            }));
        }
        start.push(stamp(phase_event(inner.phase)));
        for (name, status) in slots {
            let status = status.borrow();
            start.push(stamp(Event {
                kind: "snapshot".into(),
                daemon: name.to_string(),
                state: status.state.as_str().into(),
                pid: status.pid,
                detail: status.last_exit.clone(),
                next_start_unix_ms: next_start(&status),
                ..Default::default()
            }));
        }
        (start, receiver)
    }
}

/// How many events a watcher's connection buffers before it reads from the backlog.
const STREAM_BUFFER: usize = 16;

/// The events a `Watch` call streams.
pub type WatchStream = ReceiverStream<Result<Event, tonic::Status>>;

/// A watcher's stream: what [`Events::watch`] starts it with, then every event, a
/// "lagged" event where it fell behind, up to the first "terminated" or "re_executing"
/// phase event it sends (so that no watcher holds up the control server's stop).
pub fn stream(
    events: &Events,
    after_seq: u64,
    slots: &[(&'static str, watch::Receiver<SlotStatus>)],
) -> WatchStream {
    let (start, mut seen) = events.watch(after_seq, slots);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        for event in start {
            let last = ends_stream(&event);
            if tx.send(Ok(event)).await.is_err() || last {
                return;
            }
        }
        let mut missed = 0;
        loop {
            let event = match seen.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    missed += n;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if missed > 0 {
                // Numbered as the last event it missed, just before the next it sees.
                let lagged = Event {
                    kind: "lagged".into(),
                    seq: event.seq - 1,
                    unix_ms: unix_ms(SystemTime::now()),
                    missed: std::mem::take(&mut missed),
                    ..Default::default()
                };
                if tx.send(Ok(lagged)).await.is_err() {
                    return;
                }
            }
            let last = ends_stream(&event);
            if tx.send(Ok(event)).await.is_err() || last {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Whether `event` is the supervisor's last in its image: "terminated" or "re_executing".
fn ends_stream(event: &Event) -> bool {
    event.kind == "phase"
        && event.daemon.is_empty()
        && [Phase::Terminated, Phase::Reexecuting]
            .iter()
            .any(|end| event.state == end.as_str())
}

fn publish_locked(inner: &mut Inner, mut event: Event) {
    inner.seq += 1;
    event.seq = inner.seq;
    event.unix_ms = unix_ms(SystemTime::now());
    crate::journal::record(&event, inner.upgrade);
    if inner.recent.len() == BACKLOG {
        inner.recent.pop_front();
    }
    inner.recent.push_back(event.clone());
    // No watcher: nobody to tell.
    let _ = inner.sender.send(event);
}

fn phase_event(phase: Phase) -> Event {
    Event {
        kind: "phase".into(),
        state: phase.as_str().into(),
        pid: std::process::id(),
        ..Default::default()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When the next start is due, as Unix milliseconds (0: none due).
fn next_start(status: &SlotStatus) -> u64 {
    status
        .next_start_at
        .map(|at| {
            let now = Instant::now();
            unix_ms(SystemTime::now() + at.saturating_duration_since(now))
        })
        .unwrap_or(0)
}

/// A daemon's record, which publishes what each change changed.
#[derive(Debug)]
pub struct SlotRecorder {
    name: &'static str,
    status: watch::Sender<SlotStatus>,
    events: Events,
}

impl SlotRecorder {
    /// The record of daemon `name`, sent on `status`.
    pub fn new(name: &'static str, status: watch::Sender<SlotStatus>, events: Events) -> Self {
        Self {
            name,
            status,
            events,
        }
    }

    /// The current record.
    pub fn borrow(&self) -> watch::Ref<'_, SlotStatus> {
        self.status.borrow()
    }

    /// Publishes a step of a hand-over that changes no record: `state` (`prepared`,
    /// `released`) of instance `pid`.
    pub fn step(&self, state: &str, pid: u32, detail: String) {
        self.events.publish(Event {
            kind: "daemon".into(),
            daemon: self.name.into(),
            state: state.into(),
            pid,
            detail,
            ..Default::default()
        });
    }

    /// Publishes a phase instance `pid` reported itself.
    pub fn daemon_phase(&self, pid: u32, phase: DaemonPhase, detail: String) {
        self.events.publish(Event {
            kind: "daemon_phase".into(),
            daemon: self.name.into(),
            state: phase_name(phase),
            pid,
            detail,
            phase: phase.into(),
            ..Default::default()
        });
    }

    /// A replaced instance is gone (`how`, e.g. "exited with status 0").
    pub fn retired_gone(&self, pid: u32, how: String) {
        let mut inner = self.events.lock();
        self.status
            .send_modify(|s| s.draining.retain(|p| *p != pid));
        publish_locked(
            &mut inner,
            Event {
                kind: "retired".into(),
                daemon: self.name.into(),
                state: "exited".into(),
                pid,
                detail: how,
                ..Default::default()
            },
        );
    }

    /// Changes the record, and publishes the events the change amounts to.
    pub fn send_modify(&self, change: impl FnOnce(&mut SlotStatus)) {
        // Held across the change, so events are in the order of the changes and a new
        // watcher's snapshot is either before or after it.
        let mut inner = self.events.lock();
        let mut before = None;
        self.status.send_modify(|s| {
            before = Some(s.clone());
            change(s);
        });
        let Some(before) = before else { return };
        let after = self.status.borrow().clone();
        for event in changes(self.name, &before, &after) {
            publish_locked(&mut inner, event);
        }
    }
}

/// The events between two records of daemon `name`, in a meaningful order: an exit,
/// then the new state, then replaced instances beginning to drain (their end is
/// [`SlotRecorder::retired_gone`]).
fn changes(name: &str, before: &SlotStatus, after: &SlotStatus) -> Vec<Event> {
    let daemon = |kind: &str, state: &str, pid: u32| Event {
        kind: kind.into(),
        daemon: name.into(),
        state: state.into(),
        pid,
        ..Default::default()
    };
    let mut events = Vec::new();
    // The instance is gone (or, never seen running, failed with a new reason).
    let gone = before.pid != 0 && after.pid == 0;
    if gone || (after.last_exit != before.last_exit && !after.last_exit.is_empty()) {
        events.push(Event {
            detail: after.last_exit.clone(),
            ..daemon("daemon", "exited", before.pid)
        });
    }
    // A new instance shows with its pid: "starting" once it is spawned, "ready" when a
    // hand-over made it the serving one.
    let new_pid = after.pid != before.pid && after.pid != 0;
    let pid_pending = after.state == DaemonState::Starting && after.pid == 0;
    if (after.state != before.state || new_pid) && !pid_pending {
        let mut event = daemon("daemon", after.state.as_str(), after.pid);
        event.next_start_unix_ms = next_start(after);
        events.push(event);
    }
    for pid in &after.draining {
        if !before.draining.contains(pid) {
            events.push(daemon("retired", "draining", *pid));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_and_its_recovery_read_as_exited_backoff_starting_ready() {
        let events = Events::default();
        let (tx, rx) = watch::channel(SlotStatus::new(vec![], String::new(), String::new()));
        let recorder = SlotRecorder::new("dnsd", tx, events.clone());
        let (_, mut seen) = events.watch(0, &[("dnsd", rx)]);
        recorder.send_modify(|s| s.pid = 10);
        recorder.send_modify(|s| s.enter(DaemonState::Ready));
        recorder.send_modify(|s| {
            s.last_exit = "killed by SIGKILL".into();
            s.pid = 0;
        });
        recorder.send_modify(|s| s.enter(DaemonState::Backoff));
        recorder.send_modify(|s| s.enter(DaemonState::Starting));
        recorder.send_modify(|s| s.pid = 11);
        // Killed again the same way: still an exit.
        recorder.send_modify(|s| {
            s.last_exit = "killed by SIGKILL".into();
            s.pid = 0;
        });
        let mut got = Vec::new();
        while let Ok(e) = seen.try_recv() {
            got.push((e.seq, e.state, e.pid));
        }
        let states: Vec<_> = got.iter().map(|(_, s, p)| (s.as_str(), *p)).collect();
        assert_eq!(
            states,
            [
                ("starting", 10),
                ("ready", 10),
                ("exited", 10),
                ("backoff", 0),
                ("starting", 11),
                ("exited", 11)
            ]
        );
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_watcher_that_falls_behind_is_told_not_waited_for() {
        let events = Events::default();
        let (_, mut seen) = events.watch(0, &[]);
        for _ in 0..BACKLOG + 5 {
            events.publish(Event::default());
        }
        assert!(matches!(
            seen.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(5))
        ));
    }

    fn seqs(events: &[Event]) -> Vec<(u64, &str)> {
        events.iter().map(|e| (e.seq, e.kind.as_str())).collect()
    }

    #[test]
    fn a_watcher_continues_after_the_event_it_saw_even_across_an_exec() {
        let before = Events::default();
        before.publish(Event::default());
        before.phase(Phase::Reexecuting);
        let after = Events::carried(before.carry());
        // Nothing new yet: nothing to send, not the current state.
        assert!(after.watch(2, &[]).0.is_empty());
        after.phase(Phase::Upgrading);
        after.publish(Event {
            kind: "upgrade".into(),
            ..Default::default()
        });
        assert_eq!(seqs(&after.watch(2, &[]).0), [(3, "phase"), (4, "upgrade")]);
        assert_eq!(seqs(&after.watch(3, &[]).0), [(4, "upgrade")]);
        // Not held (numbered by the previous image): how many are lost, then the state.
        assert_eq!(seqs(&after.watch(1, &[]).0), [(4, "lagged"), (4, "phase")]);
        assert_eq!(after.watch(1, &[]).0[0].missed, 3);
        // Another supervisor's number, or none: the current state.
        assert_eq!(seqs(&after.watch(9, &[]).0), [(4, "phase")]);
        assert_eq!(seqs(&after.watch(0, &[]).0), [(4, "phase")]);
    }

    #[test]
    fn only_the_last_backlog_events_are_held_for_continuing() {
        let events = Events::default();
        for _ in 0..BACKLOG + 3 {
            events.publish(Event::default());
        }
        let last = (BACKLOG + 3) as u64;
        assert_eq!(events.watch(3, &[]).0.len(), BACKLOG);
        assert_eq!(events.watch(2, &[]).0[0].kind, "lagged");
        assert_eq!(events.watch(2, &[]).0[0].missed, last - 2);
    }
}
