//! How an event of `Supervisor.Watch` reads as one line: `securelyctl watch`'s plain lines
//! and the MESSAGE of the event's record in the journal.

use securely_proto::supervisor::Event;

/// `#12 dnsd daemon exited pid=41 (killed by SIGKILL)`.
pub fn line(event: &Event) -> String {
    let who = if event.daemon.is_empty() {
        "supervisor"
    } else {
        &event.daemon
    };
    let mut line = format!("#{} {who} {} {}", event.seq, event.kind, event.state);
    if event.pid != 0 {
        line += &format!(" pid={}", event.pid);
    }
    if event.id != 0 {
        line += &format!(" id={}", event.id);
    }
    if event.next_start_unix_ms != 0 {
        let wait = event.next_start_unix_ms.saturating_sub(event.unix_ms);
        line += &format!(" next_start_in={wait}ms");
    }
    if event.missed != 0 {
        line += &format!(" missed={}", event.missed);
    }
    if !event.detail.is_empty() {
        line += &format!(" ({})", event.detail);
    }
    line
}
