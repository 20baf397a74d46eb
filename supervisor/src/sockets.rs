//! Every listening socket of the stack, bound once by the supervisor.
//!
//! The supervisor keeps these open for its whole life and hands the same sockets to each
//! generation of each daemon, so connections that arrive while a daemon restarts wait in
//! the kernel's backlog (datagrams in the socket buffer) instead of being refused.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::Context;
use securely_core::bind;
use securely_core::listen_fds::names;
use securely_core::settings::Settings;

/// One socket handed to a daemon, with its `LISTEN_FDNAMES` name and a URL for status.
#[derive(Debug)]
pub struct Handed {
    /// The name the daemon looks it up by.
    pub name: &'static str,
    /// `tcp://`, `udp://` or `unix://`.
    pub url: String,
    /// The socket.
    pub fd: std::os::fd::OwnedFd,
}

/// The sockets of one daemon.
#[derive(Debug, Default)]
pub struct DaemonSockets {
    /// In the order they are handed over.
    pub handed: Vec<Handed>,
    /// The gRPC socket's path, removed at exit.
    pub grpc_path: PathBuf,
}

impl DaemonSockets {
    /// Borrowed fds with their names, in hand-over order.
    pub fn fds(&self) -> Vec<(&'static str, BorrowedFd<'_>)> {
        self.handed.iter().map(|h| (h.name, h.fd.as_fd())).collect()
    }

    /// The listeners as URLs, for status.
    pub fn urls(&self) -> Vec<String> {
        self.handed.iter().map(|h| h.url.clone()).collect()
    }
}

/// All sockets: the supervisor's control socket and each daemon's.
#[derive(Debug)]
pub struct StackSockets {
    /// `<runtime_dir>/control.sock`.
    pub control: UnixListener,
    /// `(daemon name, its sockets)` in start order.
    pub daemons: Vec<(&'static str, DaemonSockets)>,
    /// The socket files, removed when this is dropped.
    pub files: SocketFiles,
}

/// Socket files this process created: removed on drop, on every exit path.
#[derive(Debug, Default)]
pub struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl StackSockets {
    /// Binds every socket the settings ask for. Errors name the key and the address; the
    /// socket files created before an error are removed again.
    pub fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let mut files = SocketFiles::default();
        let control_path = settings.control_socket();
        let control = bind::unix(&control_path)
            .with_context(|| format!("binding the control socket {}", control_path.display()))?;
        files.0.push(control_path);
        let mut daemons = Vec::new();
        for daemon in securely_core::DAEMONS {
            let mut sockets = DaemonSockets::default();
            match daemon {
                "proxyd" => {
                    for (i, addr) in settings.proxy_listen().into_iter().enumerate() {
                        let listener = bind::tcp(addr)
                            .with_context(|| format!("proxy.listen[{i}]: binding TCP {addr}"))?;
                        sockets.handed.push(Handed {
                            name: names::HTTP,
                            url: format!("tcp://{addr}"),
                            fd: listener.into(),
                        });
                    }
                }
                "dnsd" => {
                    for (i, addr) in settings.dns_listen().into_iter().enumerate() {
                        let udp = bind::udp(addr)
                            .with_context(|| format!("dns.listen[{i}]: binding UDP {addr}"))?;
                        let tcp = bind::tcp(addr)
                            .with_context(|| format!("dns.listen[{i}]: binding TCP {addr}"))?;
                        sockets.handed.push(Handed {
                            name: names::DNS_UDP,
                            url: format!("udp://{addr}"),
                            fd: udp.into(),
                        });
                        sockets.handed.push(Handed {
                            name: names::DNS_TCP,
                            url: format!("tcp://{addr}"),
                            fd: tcp.into(),
                        });
                    }
                }
                _ => {}
            }
            let grpc_path = settings.daemon_socket(daemon);
            let grpc = bind::unix(&grpc_path)
                .with_context(|| format!("binding {daemon}'s socket {}", grpc_path.display()))?;
            files.0.push(grpc_path.clone());
            sockets.handed.push(Handed {
                name: names::GRPC,
                url: format!("unix://{}", grpc_path.display()),
                fd: grpc.into(),
            });
            sockets.grpc_path = grpc_path;
            daemons.push((daemon, sockets));
        }
        Ok(Self {
            control,
            daemons,
            files,
        })
    }
}
