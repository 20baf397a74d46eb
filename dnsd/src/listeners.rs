//! The DNS sockets: inherited from the supervisor (`dns-udp`, `dns-tcp`, any number of
//! each), or bound from `dns.listen` when dnsd runs standalone. An inherited socket is
//! shared with the other instance during a hand-over: both read it until one stops.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use securely_core::bind;
use securely_core::daemon::Daemon;
use securely_core::listen_fds::{ListenFdsError, names};

/// Why the DNS sockets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A socket could not be bound (standalone) or used.
    #[error("{what}: {source}")]
    Socket {
        /// Which socket.
        what: String,
        /// The reason.
        source: io::Error,
    },
    /// An inherited socket is not what its name says.
    #[error(transparent)]
    Inherited(#[from] ListenFdsError),
}

/// dnsd's DNS sockets, not yet serving.
#[derive(Debug)]
pub struct DnsSockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl DnsSockets {
    /// The inherited sockets, or, when none were handed down, sockets bound from
    /// `dns.listen` (UDP and TCP on each address).
    pub fn take(daemon: &mut Daemon) -> Result<Self, ListenError> {
        let udp = daemon.fds.take_udp(names::DNS_UDP)?;
        let tcp = daemon.fds.take_tcp(names::DNS_TCP)?;
        if !udp.is_empty() || !tcp.is_empty() {
            return Ok(Self { udp, tcp });
        }
        let mut sockets = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for (i, addr) in daemon.settings.dns_listen().into_iter().enumerate() {
            let failed = |proto: &str, source| ListenError::Socket {
                what: format!("dns.listen[{i}]: binding {proto} {addr}"),
                source,
            };
            sockets
                .udp
                .push(bind::udp(addr).map_err(|e| failed("UDP", e))?);
            sockets
                .tcp
                .push(bind::tcp(addr).map_err(|e| failed("TCP", e))?);
        }
        Ok(sockets)
    }

    /// The sockets as `udp://ADDR` and `tcp://ADDR`, for status and logs.
    pub fn describe(&self) -> Vec<String> {
        let show = |addr: io::Result<SocketAddr>| {
            addr.map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
        };
        self.udp
            .iter()
            .map(|s| format!("udp://{}", show(s.local_addr())))
            .chain(
                self.tcp
                    .iter()
                    .map(|l| format!("tcp://{}", show(l.local_addr()))),
            )
            .collect()
    }

    /// The sockets as tokio's, to serve. Must run inside the tokio runtime.
    pub fn into_tokio(
        self,
    ) -> Result<(Vec<tokio::net::UdpSocket>, Vec<tokio::net::TcpListener>), ListenError> {
        let udp = self
            .udp
            .into_iter()
            .map(|socket| {
                let what = describe_socket("UDP", socket.local_addr());
                socket
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::UdpSocket::from_std(socket))
                    .map_err(|source| ListenError::Socket { what, source })
            })
            .collect::<Result<_, _>>()?;
        let tcp = self
            .tcp
            .into_iter()
            .map(|listener| {
                let what = describe_socket("TCP", listener.local_addr());
                listener
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(listener))
                    .map_err(|source| ListenError::Socket { what, source })
            })
            .collect::<Result<_, _>>()?;
        Ok((udp, tcp))
    }
}

fn describe_socket(proto: &str, addr: io::Result<SocketAddr>) -> String {
    match addr {
        Ok(addr) => format!("serving DNS on {proto} {addr}"),
        Err(_) => format!("serving DNS on an inherited {proto} socket"),
    }
}
