//! Listening sockets handed from the supervisor to a daemon at exec time.
//!
//! The convention is systemd's socket activation: the fds start at 3, `LISTEN_FDS` says
//! how many there are and `LISTEN_FDNAMES` names them, colon-separated. A daemon therefore
//! also runs standalone under a plain systemd `.socket` unit. `LISTEN_PID`, when present,
//! must be our pid (the supervisor cannot know the child's pid before exec, so it leaves
//! it out).

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage};

use crate::inherited;

/// The first inherited fd.
pub const FIRST_FD: RawFd = 3;
/// The most fds a process accepts to inherit.
pub const MAX_FDS: usize = 256;

/// Names of the sockets a daemon can be handed.
pub mod names {
    /// A TCP listener for HTTP (proxyd).
    pub const HTTP: &str = "http";
    /// A TCP listener for https (proxyd).
    pub const HTTPS: &str = "https";
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
    /// An inherited fd is not the kind of socket its name says.
    #[error("inherited fd {fd} (named {name:?}) is not {expected}: {found}")]
    WrongSocket {
        /// The fd number.
        fd: RawFd,
        /// Its name in `LISTEN_FDNAMES`.
        name: &'static str,
        /// What the name calls for.
        expected: &'static str,
        /// What it is instead.
        found: String,
    },
}

/// The kinds of socket a daemon can inherit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A listening TCP socket (IPv4 or IPv6).
    TcpListener,
    /// A UDP socket (IPv4 or IPv6).
    Udp,
    /// A listening Unix stream socket.
    UnixListener,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::TcpListener => "a listening TCP socket",
            Kind::Udp => "a UDP socket",
            Kind::UnixListener => "a listening Unix stream socket",
        }
    }

    /// Checks that `fd` is a socket of this kind; says what it is otherwise.
    fn check(self, fd: &OwnedFd) -> Result<(), String> {
        let (ty, listening) = match self {
            Kind::TcpListener | Kind::UnixListener => (SockType::Stream, true),
            Kind::Udp => (SockType::Datagram, false),
        };
        let found = socket_type(fd.as_fd())?;
        if found != ty {
            return Err(format!("socket type {found:?}"));
        }
        let family = nix::sys::socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(|e| format!("getsockname: {e}"))?
            .family();
        let family_fits = match self {
            Kind::TcpListener | Kind::Udp => {
                matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6))
            }
            Kind::UnixListener => family == Some(AddressFamily::Unix),
        };
        if !family_fits {
            return Err(format!("address family {family:?}"));
        }
        if listening
            && !nix::sys::socket::getsockopt(&fd.as_fd(), nix::sys::socket::sockopt::AcceptConn)
                .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
        {
            return Err("not listening".into());
        }
        Ok(())
    }
}

/// The type of the socket `fd` (`SO_TYPE`); not a socket is an error.
pub(crate) fn socket_type(fd: std::os::fd::BorrowedFd<'_>) -> Result<SockType, String> {
    match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType) {
        Ok(ty) => Ok(ty),
        Err(nix::errno::Errno::ENOTSOCK) => Err("not a socket".into()),
        Err(e) => Err(format!("SO_TYPE: {e}")),
    }
}

/// The named sockets this process inherited.
#[derive(Debug, Default)]
pub struct InheritedFds {
    fds: Vec<(String, OwnedFd)>,
}

impl InheritedFds {
    /// Takes ownership of the fds announced in the environment and clears those variables,
    /// so that nothing this process starts inherits the announcement. No announcement (or
    /// one meant for another pid) gives an empty set. Call during single-threaded start-up.
    pub fn from_env() -> Result<Self, ListenFdsError> {
        let Some(count) = inherited::take_env("LISTEN_FDS") else {
            return Ok(Self::default());
        };
        let names = inherited::take_env("LISTEN_FDNAMES");
        if let Some(pid) = inherited::take_env("LISTEN_PID")
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
        let fds = (0..count).map(|i| FIRST_FD + i as RawFd);
        if let Some(closed) = fds.clone().find(|fd| !inherited::is_open(*fd)) {
            return Err(ListenFdsError::NotOpen(closed));
        }
        let names: Vec<String> = names
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_else(|| vec!["unknown".to_string(); count]);
        if names.len() != count {
            return Err(ListenFdsError::NameCount {
                names: names.len(),
                count,
            });
        }
        let fds = names
            .into_iter()
            .zip(fds)
            .map(|(name, fd)| {
                inherited::claim(fd)
                    .map(|owned| (name, owned))
                    .ok_or(ListenFdsError::NotOpen(fd))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { fds })
    }

    /// A set of named fds this process already owns (for tests and embedders).
    pub fn new(fds: Vec<(String, OwnedFd)>) -> Self {
        Self { fds }
    }

    /// Whether `fd` is one of these.
    pub(crate) fn holds(&self, fd: RawFd) -> bool {
        self.fds.iter().any(|(_, owned)| owned.as_raw_fd() == fd)
    }

    /// Removes and returns every fd with this name, in the order they were handed over,
    /// unchecked.
    fn take_all(&mut self, name: &str) -> Vec<OwnedFd> {
        let (taken, kept) = std::mem::take(&mut self.fds)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.fds = kept;
        taken.into_iter().map(|(_, fd)| fd).collect()
    }

    /// Removes and returns every listening TCP socket named `name`, non-blocking; an fd
    /// of that name that is anything else is an error.
    pub fn take_tcp(&mut self, name: &'static str) -> Result<Vec<TcpListener>, ListenFdsError> {
        self.take_checked(name, Kind::TcpListener, |fd| {
            let listener = TcpListener::from(fd);
            listener.set_nonblocking(true).map(|()| listener)
        })
    }

    /// Removes and returns every UDP socket named `name`, non-blocking; an fd of that
    /// name that is anything else is an error.
    pub fn take_udp(&mut self, name: &'static str) -> Result<Vec<UdpSocket>, ListenFdsError> {
        self.take_checked(name, Kind::Udp, |fd| {
            let socket = UdpSocket::from(fd);
            socket.set_nonblocking(true).map(|()| socket)
        })
    }

    /// Removes and returns every listening Unix stream socket named `name`,
    /// non-blocking; an fd of that name that is anything else is an error.
    pub fn take_unix(&mut self, name: &'static str) -> Result<Vec<UnixListener>, ListenFdsError> {
        self.take_checked(name, Kind::UnixListener, |fd| {
            let listener = UnixListener::from(fd);
            listener.set_nonblocking(true).map(|()| listener)
        })
    }

    fn take_checked<T>(
        &mut self,
        name: &'static str,
        kind: Kind,
        adopt: impl Fn(OwnedFd) -> std::io::Result<T>,
    ) -> Result<Vec<T>, ListenFdsError> {
        self.take_all(name)
            .into_iter()
            .map(|fd| {
                let raw = fd.as_raw_fd();
                let wrong = |found: String| ListenFdsError::WrongSocket {
                    fd: raw,
                    name,
                    expected: kind.describe(),
                    found,
                };
                kind.check(&fd).map_err(wrong)?;
                adopt(fd).map_err(|e| wrong(format!("cannot make it non-blocking: {e}")))
            })
            .collect()
    }
}

/// The environment that announces `names` (in fd order from [`FIRST_FD`]) to a child.
pub fn announce<'a>(names: impl IntoIterator<Item = &'a str>) -> [(&'static str, String); 2] {
    let names: Vec<&str> = names.into_iter().collect();
    [
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::UnixListener;

    use super::*;

    fn named(fds: Vec<(&str, OwnedFd)>) -> InheritedFds {
        InheritedFds::new(fds.into_iter().map(|(n, fd)| (n.to_string(), fd)).collect())
    }

    #[test]
    fn typed_takes_check_each_socket_and_make_it_non_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        let mut fds = named(vec![
            ("http", tcp.into()),
            ("dns-udp", udp.into()),
            ("grpc", unix.into()),
        ]);
        let tcp = fds.take_tcp(names::HTTP).unwrap();
        assert_eq!(tcp.len(), 1);
        assert_eq!(tcp[0].local_addr().unwrap(), tcp_addr);
        assert!(matches!(
            tcp[0].accept().map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        ));
        assert_eq!(fds.take_udp(names::DNS_UDP).unwrap().len(), 1);
        assert_eq!(fds.take_unix(names::GRPC).unwrap().len(), 1);
        // Taken once: nothing of those names is left.
        assert!(fds.take_tcp(names::HTTP).unwrap().is_empty());
    }

    #[test]
    fn a_socket_of_the_wrong_kind_is_refused_by_name() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut fds = named(vec![("http", udp.into())]);
        let err = fds.take_tcp(names::HTTP).unwrap_err();
        assert!(
            matches!(&err, ListenFdsError::WrongSocket { name: "http", found, .. } if found.contains("Datagram")),
            "{err}"
        );

        // A TCP socket that does not listen.
        let stream = nix::sys::socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .unwrap();
        let mut fds = named(vec![("dns-tcp", stream)]);
        let err = fds.take_tcp(names::DNS_TCP).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");

        // A TCP listener where a Unix socket belongs.
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut fds = named(vec![("grpc", tcp.into())]);
        let err = fds.take_unix(names::GRPC).unwrap_err();
        assert!(err.to_string().contains("address family"), "{err}");

        // Not a socket at all.
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut fds = named(vec![("dns-udp", file.into())]);
        let err = fds.take_udp(names::DNS_UDP).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
