//! The listening sockets (plain HTTP and https), and how an already-bound socket reaches
//! pingora.
//!
//! proxyd never lets pingora bind: under the supervisor the sockets are inherited at exec
//! time (named `http` and `https`), standalone proxyd binds them itself with
//! [`securely_core::bind::tcp`]. Either way pingora must adopt a socket that is already
//! listening. pingora offers two doors:
//!
//! * its upgrade handshake: start with `upgrade: true` and have some "old process" send the
//!   fds over `upgrade_sock` (SCM_RIGHTS). That needs a second party racing pingora's
//!   bootstrap with retries and timeouts, and `upgrade_sock` is the supervisor's own
//!   hand-over socket.
//! * its listen-fd table (`ListenFds`): when a listening service builds its endpoints it
//!   first looks its address up in that table and adopts the fd it finds there
//!   (`ListenerEndpointBuilder::listen`), binding only when there is none.
//!
//! proxyd uses the table. `Server` keeps the table private, but hands it to every service
//! in `start_service`; proxyd's service wrapper ([`crate::service::ProxyService`]) puts
//! the fds in ([`hand_over`]) and then, in the same task, lets the proxy build its
//! listeners. There is no second process, socket or timing involved, and nothing can
//! build the listeners before the table is filled. The keys are the sockets' own local
//! addresses (getsockname), and the same strings are given to `add_tcp`, so every lookup
//! hits. pingora wraps the fd in a tokio listener without changing its flags, so each
//! socket must be `O_NONBLOCK` (a blocking one would stall a worker thread in `accept`
//! and the proxy would silently never answer): `bind::tcp` binds it so, and core's
//! `take_tcp` makes an inherited one so, whatever the parent left.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;

use pingora::server::ListenFds;
use securely_core::daemon::Daemon;
use securely_core::listen_fds::{ListenFdsError, names};

/// Why the HTTP listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// An inherited `http` or `https` fd is not a listening TCP socket.
    #[error(transparent)]
    Inherited(#[from] ListenFdsError),
    /// An inherited socket has no IP address.
    #[error("inherited socket (named \"http\") has no IP address: {0}")]
    NoAddress(io::Error),
    /// A socket could not be bound (standalone).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `proxy.listen`.
        addr: SocketAddr,
        /// The reason.
        source: io::Error,
    },
    /// Two sockets have the same local address, so pingora could not tell them apart.
    #[error("two proxy sockets listen on {0}")]
    Duplicate(SocketAddr),
    /// There is nothing to listen on.
    #[error("no HTTP socket to listen on (proxy.listen is empty)")]
    None,
}

/// A listening TCP socket for HTTP, non-blocking.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    /// Adopts an inherited listening TCP socket (checked and made non-blocking by
    /// [`securely_core::listen_fds::InheritedFds::take_tcp`]).
    pub fn inherited(listener: TcpListener) -> Result<Self, ListenerError> {
        let addr = listener.local_addr().map_err(ListenerError::NoAddress)?;
        Ok(Self { listener, addr })
    }

    /// Binds `addr` (standalone); [`securely_core::bind::tcp`] makes it non-blocking.
    pub fn bind(addr: SocketAddr) -> Result<Self, ListenerError> {
        let bind_error = |source| ListenerError::Bind { addr, source };
        let listener = securely_core::bind::tcp(addr).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }

    /// The socket's own local address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key in pingora's listen-fd table, which must equal the `add_tcp` address.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }
}

/// proxyd's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP (`proxy.listen`, inherited as `http`); at least one.
    pub http: Vec<HttpListener>,
    /// https (`proxy.tls_listen`, inherited as `https`); maybe none.
    pub https: Vec<HttpListener>,
}

impl Listeners {
    /// Every socket's address, plain HTTP first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.http
            .iter()
            .chain(&self.https)
            .map(HttpListener::addr)
            .collect()
    }
}

/// The listeners: every inherited `http` and `https` socket, or, standalone (none
/// inherited), one bound for each address in `proxy.listen` and `proxy.tls_listen`.
pub fn take(daemon: &mut Daemon) -> Result<Listeners, ListenerError> {
    let http = daemon.fds.take_tcp(names::HTTP)?;
    let https = daemon.fds.take_tcp(names::HTTPS)?;
    let listeners = if http.is_empty() && https.is_empty() {
        let bind = |addrs: Vec<SocketAddr>| {
            addrs
                .into_iter()
                .map(HttpListener::bind)
                .collect::<Result<Vec<_>, _>>()
        };
        Listeners {
            http: bind(daemon.settings.proxy_listen())?,
            https: bind(daemon.settings.proxy_tls_listen())?,
        }
    } else {
        let adopt = |fds: Vec<TcpListener>| {
            fds.into_iter()
                .map(HttpListener::inherited)
                .collect::<Result<Vec<_>, _>>()
        };
        Listeners {
            http: adopt(http)?,
            https: adopt(https)?,
        }
    };
    if listeners.http.is_empty() {
        return Err(ListenerError::None);
    }
    let addrs = listeners.addrs();
    for (i, addr) in addrs.iter().enumerate() {
        if addrs[..i].contains(addr) {
            return Err(ListenerError::Duplicate(*addr));
        }
    }
    Ok(listeners)
}

/// Puts each listener's fd into pingora's listen-fd table under its key. pingora owns
/// the fds from here on (the proxy's endpoints close them when they stop accepting).
pub fn hand_over(table: &ListenFds, listeners: Vec<HttpListener>) {
    let mut table = table.lock();
    for listener in listeners {
        let key = listener.key();
        tracing::debug!(%key, "handing listening socket to pingora");
        table.add(key, listener.listener.into_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_is_keyed_by_its_real_address_and_non_blocking() {
        let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(listener.addr().port(), 0);
        assert_eq!(
            listener.key(),
            format!("127.0.0.1:{}", listener.addr().port())
        );
        let flags = nix::fcntl::fcntl(&listener.listener, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(
            nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
        );
    }

    #[test]
    fn an_inherited_socket_is_keyed_by_its_own_address() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap();
        let listener = HttpListener::inherited(bound).unwrap();
        assert_eq!(listener.addr(), addr);
        assert_eq!(listener.key(), addr.to_string());
    }
}
