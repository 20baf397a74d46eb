//! Listening sockets handed from the supervisor to a daemon at exec time.
//!
//! The convention is systemd's socket activation: the fds start at 3, `LISTEN_FDS` says
//! how many there are and `LISTEN_FDNAMES` names them, colon-separated. A daemon therefore
//! also runs standalone under a plain systemd `.socket` unit. `LISTEN_PID`, when present,
//! must be our pid (the supervisor cannot know the child's pid before exec, so it leaves
//! it out).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first inherited fd.
pub const FIRST_FD: RawFd = 3;
/// The most fds a process accepts to inherit.
pub const MAX_FDS: usize = 256;

/// Names of the sockets a daemon can be handed.
pub mod names {
    /// A TCP listener for HTTP (proxyd).
    pub const HTTP: &str = "http";
    /// A UDP socket for DNS (dnsd).
    pub const DNS_UDP: &str = "dns-udp";
    /// A TCP listener for DNS (dnsd).
    pub const DNS_TCP: &str = "dns-tcp";
    /// The daemon's gRPC Unix socket.
    pub const GRPC: &str = "grpc";
}

/// Why the inherited fds could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    /// `LISTEN_FDS` is not a number, or too large.
    #[error("LISTEN_FDS={0:?} is not a count of fds (at most 256)")]
    BadCount(String),
    /// An announced fd is not open.
    #[error("inherited fd {0} is not open")]
    NotOpen(RawFd),
    /// `LISTEN_FDNAMES` does not name every fd.
    #[error("LISTEN_FDNAMES names {names} fds but LISTEN_FDS says {count}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Fds announced.
        count: usize,
    },
    /// A socket the daemon needs was not handed to it.
    #[error("no inherited socket named {0:?} (is the daemon started by the supervisor?)")]
    Missing(&'static str),
}

/// The named sockets this process inherited.
#[derive(Debug, Default)]
pub struct InheritedFds {
    fds: Vec<(String, OwnedFd)>,
}

impl InheritedFds {
    /// Takes ownership of the fds announced in the environment and clears those variables,
    /// so that nothing this process starts inherits the announcement. No announcement (or
    /// one meant for another pid) gives an empty set.
    pub fn from_env() -> Result<Self, ListenFdsError> {
        let count = match std::env::var("LISTEN_FDS") {
            Ok(count) => count,
            Err(_) => return Ok(Self::default()),
        };
        if let Ok(pid) = std::env::var("LISTEN_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return Ok(Self::default());
        }
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= MAX_FDS)
            .ok_or_else(|| ListenFdsError::BadCount(count.clone()))?;
        for i in 0..count {
            let fd = FIRST_FD + i as RawFd;
            // SAFETY: only asks the kernel about the fd; nothing is owned yet.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                return Err(ListenFdsError::NotOpen(fd));
            }
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_else(|_| vec!["unknown".to_string(); count]);
        if names.len() != count {
            return Err(ListenFdsError::NameCount {
                names: names.len(),
                count,
            });
        }
        // SAFETY: single-threaded start-up; nothing else reads these variables.
        unsafe {
            for key in ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"] {
                std::env::remove_var(key);
            }
        }
        let fds = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let fd = FIRST_FD + i as RawFd;
                set_cloexec(fd);
                // SAFETY: the announcement transfers ownership of fds 3..3+count to us.
                (name, unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect();
        Ok(Self { fds })
    }

    /// Removes and returns every fd with this name, in the order they were handed over.
    pub fn take_all(&mut self, name: &str) -> Vec<OwnedFd> {
        let (taken, kept) = std::mem::take(&mut self.fds)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.fds = kept;
        taken.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Removes and returns the one fd with this name.
    pub fn take_one(&mut self, name: &'static str) -> Result<OwnedFd, ListenFdsError> {
        self.take_all(name)
            .into_iter()
            .next()
            .ok_or(ListenFdsError::Missing(name))
    }
}

fn set_cloexec(fd: RawFd) {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: fd is one of ours (see from_env); a failure leaves the flag as it was.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// The environment that announces `names` (in fd order from [`FIRST_FD`]) to a child.
pub fn announce<'a>(names: impl IntoIterator<Item = &'a str>) -> [(&'static str, String); 2] {
    let names: Vec<&str> = names.into_iter().collect();
    [
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
    ]
}
