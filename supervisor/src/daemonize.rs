//! `-d`: run in the background the way systemd's `Type=forking` expects.
//!
//! The original process forks, and waits on a pipe: it exits 0 only once the supervisor
//! reports every daemon ready (the pid file already naming the running supervisor), or
//! exits 1 with the reason start-up failed. Fork happens before any thread exists.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context;
use nix::unistd::{ForkResult, setsid};

use crate::sys;

const READY: &str = "READY";

/// The background process's end of the start-up pipe.
#[derive(Debug, Default)]
pub struct StartupReport {
    pipe: Option<std::fs::File>,
}

impl StartupReport {
    /// Tells the waiting parent that start-up succeeded.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(READY.as_bytes());
        }
    }

    /// Tells the waiting parent why start-up failed.
    pub fn failed(&mut self, reason: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(reason.as_bytes());
        }
    }

    /// Whether a parent is still waiting.
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }
}

/// Forks into the background. Returns in the background process only; the foreground
/// process exits with the start-up result. `error_log` receives stdout and stderr when
/// not under journald.
pub fn daemonize(error_log: Option<&Path>) -> anyhow::Result<StartupReport> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the start-up pipe")?;
    // No other thread exists yet: called before the runtime starts.
    match sys::fork().context("forking into the background")? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            // The waiting parent keeps the default signal actions.
            let _ = crate::signals::stop_signals().thread_unblock();
            std::process::exit(wait_for_report(read_end));
        }
        ForkResult::Child => {
            drop(read_end);
            setsid().context("starting a new session")?;
            std::env::set_current_dir("/").context("changing to /")?;
            redirect_stdio(error_log)?;
            Ok(StartupReport {
                pipe: Some(std::fs::File::from(write_end)),
            })
        }
    }
}

fn wait_for_report(read_end: OwnedFd) -> i32 {
    let mut report = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut report);
    match report.as_str() {
        READY => 0,
        "" => {
            eprintln!("securely: error: the background supervisor exited during start-up");
            1
        }
        reason => {
            eprintln!("securely: error: start-up failed: {reason}");
            1
        }
    }
}

/// stdin from /dev/null; stdout and stderr to `error_log`, or /dev/null, unless systemd
/// collects them for the journal.
fn redirect_stdio(error_log: Option<&Path>) -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("redirecting stdin")?;
    if securely_core::logging::journal_connected() {
        return Ok(());
    }
    let out = match error_log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("error_log: opening {}", path.display()))?,
        None => null,
    };
    rustix::stdio::dup2_stdout(&out).context("redirecting stdout")?;
    rustix::stdio::dup2_stderr(&out).context("redirecting stderr")
}
