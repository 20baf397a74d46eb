//! `securelyctl watch --json` run in the background, its lines parsed as they come.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Stack, bin};

/// A running `securelyctl watch --json`.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
}

impl Watcher {
    /// Starts watching `stack`.
    pub fn start(stack: &Stack) -> Self {
        let mut child = Command::new(bin("securelyctl"))
            .arg("--socket")
            .arg(stack.control_socket())
            .args(["watch", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run securelyctl watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one matches `wanted` (returned); panics, showing what was
    /// seen, if none does within `deadline` or the stream ends. Every line must be JSON.
    pub fn until(
        &mut self,
        what: &str,
        deadline: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("no {what} ({e}); seen: {:#?}", self.seen),
            };
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }

    /// Whether the stream ended (securelyctl exited) within `deadline`, with success.
    pub fn ended_ok(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `event` is of `kind`, about `daemon`, in `state`.
pub fn is(event: &Value, kind: &str, daemon: &str, state: &str) -> bool {
    event["kind"] == kind
        && event["daemon"].as_str().unwrap_or("") == daemon
        && event["state"] == state
}
