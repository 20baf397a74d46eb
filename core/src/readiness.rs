//! Readiness, reported by a daemon to whoever started it.
//!
//! Under the supervisor, the daemon inherits one end of a stream socket pair whose fd is
//! in `SECURELY_NOTIFY_FD`, and writes sd_notify-style lines on it (`READY=1`,
//! `STOPPING=1`, `STATUS=...`). The same fd tells the daemon when the supervisor is gone:
//! reading it returns end-of-file. Standalone under systemd, the daemon speaks sd_notify
//! on `NOTIFY_SOCKET` instead.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// The variable naming the inherited notification fd.
pub const NOTIFY_FD_ENV: &str = "SECURELY_NOTIFY_FD";

/// One readiness message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Serving.
    Ready,
    /// Draining: no new work is accepted.
    Stopping,
    /// A one-line human-readable status.
    Status(String),
}

impl Notice {
    /// The sd_notify line for this notice.
    pub fn to_line(&self) -> String {
        match self {
            Notice::Ready => "READY=1".into(),
            Notice::Stopping => "STOPPING=1".into(),
            Notice::Status(s) => format!("STATUS={}", s.replace('\n', " ")),
        }
    }

    /// Parses one sd_notify line; unknown lines give `None`.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim_end() {
            "READY=1" => Some(Notice::Ready),
            "STOPPING=1" => Some(Notice::Stopping),
            other => other
                .strip_prefix("STATUS=")
                .map(|s| Notice::Status(s.to_string())),
        }
    }
}

/// Where this process reports readiness.
#[derive(Debug)]
pub enum Notifier {
    /// The supervisor's notification socket.
    Supervisor(Mutex<UnixStream>),
    /// systemd's `NOTIFY_SOCKET`.
    Systemd,
    /// Nobody listens.
    None,
}

impl Notifier {
    /// Picks up the notification channel from the environment (and clears it, so that
    /// processes we start do not inherit it).
    pub fn from_env() -> Self {
        if let Some(fd) = std::env::var(NOTIFY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
        {
            // SAFETY: single-threaded start-up; the supervisor handed this fd to us alone.
            unsafe { std::env::remove_var(NOTIFY_FD_ENV) };
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Keep it from whatever this process starts (dup2 cleared the flag).
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let stream = UnixStream::from(fd);
            let _ = stream.set_nonblocking(false);
            return Notifier::Supervisor(Mutex::new(stream));
        }
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return Notifier::Systemd;
        }
        Notifier::None
    }

    /// Sends one notice; a supervisor that is gone is not an error here (see
    /// [`Notifier::supervisor_gone`]).
    pub fn notify(&self, notice: Notice) {
        match self {
            Notifier::Supervisor(stream) => {
                let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(stream, "{}", notice.to_line());
            }
            Notifier::Systemd => {
                let state = match notice {
                    Notice::Ready => sd_notify::NotifyState::Ready,
                    Notice::Stopping => sd_notify::NotifyState::Stopping,
                    Notice::Status(ref s) => sd_notify::NotifyState::Status(s),
                };
                let _ = sd_notify::notify(&[state]);
            }
            Notifier::None => {}
        }
    }

    /// Starts a thread that calls `on_gone` once the supervisor has gone away (its end
    /// of the socket pair closed). Does nothing when not started by the supervisor.
    pub fn on_supervisor_gone(&self, on_gone: impl FnOnce() + Send + 'static) {
        let Notifier::Supervisor(stream) = self else {
            return;
        };
        let Ok(mut reader) = stream.lock().unwrap_or_else(|e| e.into_inner()).try_clone() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("supervisor-watch".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                on_gone();
            });
        if let Err(e) = spawned {
            // Serving goes on; only the drain on the supervisor's disappearance is lost.
            tracing::warn!("cannot watch the supervisor: {e}");
        }
    }
}
