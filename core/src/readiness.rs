//! Readiness and hand-over, between a daemon and whoever started it.
//!
//! Under the supervisor, the daemon inherits one end of a stream socket pair whose fd is
//! in `SECURELY_NOTIFY_FD`, and writes sd_notify-style lines on it (`READY=1`,
//! `STOPPING=1`, `STATUS=...`, plus the hand-over's `PREPARED=1` and `RELEASED=1`, and
//! `PHASE=<name>[ <detail>]` for each phase of its own it enters, see [`DaemonPhase`]). The
//! supervisor writes [`Command`]s the other way (`ACQUIRE`, `RELEASE`, `RESUME`), and the
//! same fd tells the daemon when the supervisor is gone: reading it returns end-of-file.
//! Standalone under systemd, the daemon speaks sd_notify on `NOTIFY_SOCKET` instead.
//!
//! The hand-over, from one instance of a daemon (old) to the next (new):
//! 1. new prepares everything that does not need its sled tree, sends `PREPARED=1` and
//!    waits for `ACQUIRE`;
//! 2. the supervisor sends `RELEASE` to old, which stops its gRPC server (calls in flight
//!    finish), closes its tree and answers `RELEASED=1`; what it serves from memory
//!    (HTTP, DNS) goes on;
//! 3. the supervisor sends `ACQUIRE` to new, which opens the tree and sends `READY=1`;
//! 4. the supervisor stops old (SIGTERM: it drains and exits). Had new failed after step
//!    2, the supervisor sends old `RESUME` instead: it reopens its tree, serves gRPC again
//!    and answers `READY=1`.
//!
//! After a crash there is no old instance: `ACQUIRE` follows `PREPARED=1` at once.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage};

use crate::inherited;
use crate::listen_fds::InheritedFds;

/// The variable naming the inherited notification fd.
pub const NOTIFY_FD_ENV: &str = "SECURELY_NOTIFY_FD";

/// Why the inherited notification fd cannot be used. Checked like `LISTEN_FDS`: a daemon
/// that cannot talk to its supervisor refuses to start rather than serve unsupervised.
#[derive(Debug, thiserror::Error)]
pub enum NotifyFdError {
    /// The variable is not an fd number above stdio's.
    #[error("{NOTIFY_FD_ENV}={0:?} is not an fd number above 2")]
    BadNumber(String),
    /// The fd is not open.
    #[error("{NOTIFY_FD_ENV}={0}: fd {0} is not open")]
    NotOpen(RawFd),
    /// The fd is one of the sockets announced in `LISTEN_FDS`.
    #[error("{NOTIFY_FD_ENV}={0}: fd {0} is one of the inherited sockets (LISTEN_FDS)")]
    Inherited(RawFd),
    /// The fd is open but not one end of a Unix stream socket pair.
    #[error("{NOTIFY_FD_ENV}={fd}: fd {fd} is not a Unix stream socket ({found})")]
    WrongSocket {
        /// The fd number.
        fd: RawFd,
        /// What it is instead.
        found: String,
    },
}

/// One readiness message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Serving.
    Ready,
    /// Draining: no new work is accepted.
    Stopping,
    /// A one-line human-readable status.
    Status(String),
    /// Reloading (the supervisor's upgrade); `READY=1` follows when done.
    Reloading,
    /// Prepared for a hand-over: waiting for [`Command::Acquire`].
    Prepared,
    /// The sled tree is closed after [`Command::Release`].
    Released,
    /// The daemon entered `phase` (`detail`: one line, possibly empty).
    Phase {
        /// The phase.
        phase: DaemonPhase,
        /// What goes with it.
        detail: String,
    },
}

pub use securely_proto::supervisor::DaemonPhase;

/// The prefix of every [`DaemonPhase`] value's name in the contract.
const PHASE_PREFIX: &str = "DAEMON_PHASE_";

/// A phase's name in `PHASE=` lines and events: its name in the contract after
/// `DAEMON_PHASE_`, in lowercase (`opening`).
pub fn phase_name(phase: DaemonPhase) -> String {
    let name = phase.as_str_name();
    name.strip_prefix(PHASE_PREFIX)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// The phase named `name` ([`phase_name`]'s inverse); unknown names give `None`.
pub fn parse_phase(name: &str) -> Option<DaemonPhase> {
    DaemonPhase::from_str_name(&format!("{PHASE_PREFIX}{}", name.to_ascii_uppercase()))
        .filter(|phase| *phase != DaemonPhase::Unspecified)
}

impl Notice {
    /// The sd_notify line for this notice.
    pub fn to_line(&self) -> String {
        match self {
            Notice::Ready => "READY=1".into(),
            Notice::Stopping => "STOPPING=1".into(),
            Notice::Status(s) => format!("STATUS={}", s.replace('\n', " ")),
            Notice::Reloading => "RELOADING=1".into(),
            Notice::Prepared => "PREPARED=1".into(),
            Notice::Released => "RELEASED=1".into(),
            Notice::Phase { phase, detail } if detail.is_empty() => {
                format!("PHASE={}", phase_name(*phase))
            }
            Notice::Phase { phase, detail } => {
                format!("PHASE={} {}", phase_name(*phase), detail.replace('\n', " "))
            }
        }
    }

    /// Parses one sd_notify line; unknown lines give `None`.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim_end() {
            "READY=1" => Some(Notice::Ready),
            "STOPPING=1" => Some(Notice::Stopping),
            "RELOADING=1" => Some(Notice::Reloading),
            "PREPARED=1" => Some(Notice::Prepared),
            "RELEASED=1" => Some(Notice::Released),
            other => {
                if let Some(status) = other.strip_prefix("STATUS=") {
                    return Some(Notice::Status(status.to_string()));
                }
                let (name, detail) = other
                    .strip_prefix("PHASE=")?
                    .split_once(' ')
                    .unwrap_or((other.strip_prefix("PHASE=")?, ""));
                Some(Notice::Phase {
                    phase: parse_phase(name)?,
                    detail: detail.to_string(),
                })
            }
        }
    }
}

/// What the supervisor asks of a daemon instance during a hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open the sled tree and serve (the previous instance has let go of it).
    Acquire,
    /// Stop gRPC, close the sled tree, answer [`Notice::Released`]; keep serving what
    /// needs no tree.
    Release,
    /// The hand-over failed: reopen the tree, serve gRPC again, answer [`Notice::Ready`].
    Resume,
}

impl Command {
    /// The line sent for this command.
    pub fn to_line(self) -> &'static str {
        match self {
            Command::Acquire => "ACQUIRE",
            Command::Release => "RELEASE",
            Command::Resume => "RESUME",
        }
    }

    /// Parses one line; unknown lines give `None`.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim_end() {
            "ACQUIRE" => Some(Command::Acquire),
            "RELEASE" => Some(Command::Release),
            "RESUME" => Some(Command::Resume),
            _ => None,
        }
    }
}

/// Takes the fd `value` names, checked to be one end of a Unix stream socket and none of
/// `listening`, blocking.
fn notify_stream(value: &str, listening: &InheritedFds) -> Result<UnixStream, NotifyFdError> {
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| NotifyFdError::BadNumber(value.to_string()))?;
    if listening.holds(fd) {
        return Err(NotifyFdError::Inherited(fd));
    }
    let owned: OwnedFd = inherited::claim(fd).ok_or(NotifyFdError::NotOpen(fd))?;
    let wrong = |found: String| NotifyFdError::WrongSocket { fd, found };
    let ty = crate::listen_fds::socket_type(owned.as_fd()).map_err(wrong)?;
    if ty != SockType::Stream {
        return Err(wrong(format!("socket type {ty:?}")));
    }
    let family = nix::sys::socket::getsockname::<SockaddrStorage>(owned.as_raw_fd())
        .map_err(|e| wrong(format!("getsockname: {e}")))?
        .family();
    if family != Some(AddressFamily::Unix) {
        return Err(wrong(format!("address family {family:?}")));
    }
    let stream = UnixStream::from(owned);
    stream
        .set_nonblocking(false)
        .map_err(|e| wrong(format!("cannot make it blocking: {e}")))?;
    Ok(stream)
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
    /// processes we start do not inherit it): the supervisor's socket when
    /// [`NOTIFY_FD_ENV`] names one (checked: an open Unix stream socket), else systemd's
    /// `NOTIFY_SOCKET`, else nobody. `listening` are the sockets this process took from
    /// `LISTEN_FDS`, which the notification fd must not be. Call during single-threaded
    /// start-up.
    pub fn from_env(listening: &InheritedFds) -> Result<Self, NotifyFdError> {
        if let Some(value) = inherited::take_env(NOTIFY_FD_ENV) {
            let stream = notify_stream(&value, listening)?;
            return Ok(Notifier::Supervisor(Mutex::new(stream)));
        }
        Ok(Self::systemd())
    }

    /// systemd's `NOTIFY_SOCKET` when set, else nobody: for the supervisor, which no
    /// supervisor starts.
    pub fn systemd() -> Self {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            Notifier::Systemd
        } else {
            Notifier::None
        }
    }

    /// Sends one notice; a supervisor that is gone is not an error here (see
    /// [`Notifier::listen`]).
    pub fn notify(&self, notice: Notice) {
        match self {
            Notifier::Supervisor(stream) => {
                let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(stream, "{}", notice.to_line());
            }
            Notifier::Systemd => {
                let state = match notice {
                    // MAINPID too: under Type=notify systemd then follows this process
                    // whoever started it, and it is the same across an upgrade's exec.
                    Notice::Ready => {
                        let _ = sd_notify::notify(&[
                            sd_notify::NotifyState::MainPid(std::process::id()),
                            sd_notify::NotifyState::Ready,
                        ]);
                        return;
                    }
                    Notice::Stopping => sd_notify::NotifyState::Stopping,
                    Notice::Status(ref s) => sd_notify::NotifyState::Status(s),
                    Notice::Reloading => {
                        let _ = sd_notify::notify(&[
                            sd_notify::NotifyState::Reloading,
                            sd_notify::NotifyState::monotonic_usec_now()
                                .unwrap_or(sd_notify::NotifyState::Reloading),
                        ]);
                        return;
                    }
                    // Hand-over lines and phases mean nothing to systemd.
                    Notice::Prepared | Notice::Released | Notice::Phase { .. } => return,
                };
                let _ = sd_notify::notify(&[state]);
            }
            Notifier::None => {}
        }
    }

    /// Whether a supervisor started this process (and so drives hand-overs).
    pub fn supervised(&self) -> bool {
        matches!(self, Notifier::Supervisor(_))
    }

    /// Starts a thread that reads the supervisor's commands into the returned receiver
    /// and calls `on_gone` once the supervisor has gone away (its end of the socket pair
    /// closed; the receiver then ends too). Not supervised, the receiver never yields.
    pub fn listen(
        &self,
        on_gone: impl FnOnce() + Send + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Command> {
        let (commands, receiver) = tokio::sync::mpsc::unbounded_channel();
        let Notifier::Supervisor(stream) = self else {
            // Keep the sender alive so the receiver pends instead of ending.
            std::mem::forget(commands);
            return receiver;
        };
        let Ok(reader) = stream.lock().unwrap_or_else(|e| e.into_inner()).try_clone() else {
            std::mem::forget(commands);
            return receiver;
        };
        let spawned = std::thread::Builder::new()
            .name("supervisor-watch".into())
            .spawn(move || {
                use std::io::BufRead;
                let mut lines = std::io::BufReader::new(reader);
                let mut line = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) => match Command::parse(&line) {
                            Some(command) => {
                                let _ = commands.send(command);
                            }
                            None => {
                                tracing::warn!(line = line.trim_end(), "unknown supervisor command")
                            }
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                drop(commands);
                on_gone();
            });
        if let Err(e) = spawned {
            // Serving goes on; hand-overs and the drain on the supervisor's
            // disappearance are lost.
            tracing::warn!("cannot watch the supervisor: {e}");
        }
        receiver
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn the_notification_fd_is_checked_like_listen_fds() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let none = InheritedFds::default();
        let mut stream = notify_stream(&theirs.into_raw_fd().to_string(), &none).unwrap();
        writeln!(stream, "READY=1").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&ours), &mut line).unwrap();
        assert_eq!(line, "READY=1\n");

        for bad in ["", "four", "-1", "2"] {
            let err = notify_stream(bad, &none).unwrap_err();
            assert!(matches!(err, NotifyFdError::BadNumber(_)), "{bad:?}: {err}");
        }
        let err = notify_stream("1000000", &none).unwrap_err();
        assert!(matches!(err, NotifyFdError::NotOpen(1_000_000)), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = notify_stream(&udp.into_raw_fd().to_string(), &none).unwrap_err();
        assert!(err.to_string().contains("socket type Datagram"), "{err}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = notify_stream(&tcp.into_raw_fd().to_string(), &none).unwrap_err();
        assert!(err.to_string().contains("address family"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = notify_stream(&file.into_raw_fd().to_string(), &none).unwrap_err();
        assert!(
            err.to_string().contains("SECURELY_NOTIFY_FD=")
                && err.to_string().contains("not a socket"),
            "{err}"
        );

        // An fd already taken as a listening socket is not taken twice.
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let raw = theirs.as_raw_fd();
        let listening = InheritedFds::new(vec![("grpc".into(), theirs.into())]);
        let err = notify_stream(&raw.to_string(), &listening).unwrap_err();
        assert!(
            matches!(err, NotifyFdError::Inherited(fd) if fd == raw),
            "{err}"
        );
    }

    #[test]
    fn phase_lines_carry_the_contracts_names_and_a_detail() {
        let stopping = Notice::Phase {
            phase: DaemonPhase::Stopping,
            detail: "graceful".into(),
        };
        assert_eq!(stopping.to_line(), "PHASE=stopping graceful");
        assert_eq!(Notice::parse("PHASE=stopping graceful\n"), Some(stopping));
        let released = Notice::Phase {
            phase: DaemonPhase::Released,
            detail: String::new(),
        };
        assert_eq!(released.to_line(), "PHASE=released");
        assert_eq!(Notice::parse("PHASE=released"), Some(released));
        let failed = Notice::Phase {
            phase: DaemonPhase::Stopped,
            detail: "cannot close\nthe tree".into(),
        };
        assert_eq!(failed.to_line(), "PHASE=stopped cannot close the tree");
        for unknown in ["PHASE=", "PHASE=unspecified", "PHASE=dancing fast", "PHASE"] {
            assert_eq!(Notice::parse(unknown), None, "{unknown}");
        }
        for phase in [
            DaemonPhase::Opening,
            DaemonPhase::Drained,
            DaemonPhase::Resuming,
        ] {
            assert_eq!(parse_phase(&phase_name(phase)), Some(phase));
        }
    }
}
