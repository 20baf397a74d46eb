//! Every listening socket of the stack, bound once by the supervisor.
//!
//! The supervisor keeps these open for its whole life and hands the same sockets to each
//! generation of each daemon, so connections that arrive while a daemon restarts wait in
//! the kernel's backlog (datagrams in the socket buffer) instead of being refused.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::Context;
use securely_core::bind;
use securely_core::listen_fds::names;
use securely_core::settings::Settings;

use crate::sys;

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

impl SocketFiles {
    /// Leaves the files to another process: none is removed at drop.
    pub fn disown(&mut self) {
        self.0.clear();
    }
}

/// One socket as it crosses an exec of the supervisor: kept open, by number.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CarriedSocket {
    /// `control`, or the daemon it belongs to.
    pub owner: String,
    /// Its `LISTEN_FDNAMES` name (`control` for the control socket).
    pub name: String,
    /// Its URL, which identifies it.
    pub url: String,
    /// The fd number, open (without close-on-exec) in the next image.
    pub fd: RawFd,
}

/// Every socket of the stack, carried across an exec.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CarriedSockets {
    /// The sockets, each daemon's in hand-over order.
    pub sockets: Vec<CarriedSocket>,
    /// The socket files to remove at exit.
    pub files: Vec<PathBuf>,
}

impl CarriedSockets {
    /// Closes the carried sockets (after [`StackSockets::adopt`] duplicated what it needs).
    pub fn close(self) {
        for c in self.sockets {
            drop(sys::take_carried(c.fd));
        }
    }
}

fn set_close_on_exec(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl StackSockets {
    /// Every socket by fd number, with its owner, name and URL.
    pub fn describe(&self) -> CarriedSockets {
        let mut sockets = vec![CarriedSocket {
            owner: "control".into(),
            name: "control".into(),
            url: String::new(),
            fd: self.control.as_raw_fd(),
        }];
        for (daemon, handed) in &self.daemons {
            for h in &handed.handed {
                sockets.push(CarriedSocket {
                    owner: daemon.to_string(),
                    name: h.name.to_string(),
                    url: h.url.clone(),
                    fd: h.fd.as_raw_fd(),
                });
            }
        }
        CarriedSockets {
            sockets,
            files: self.files.0.clone(),
        }
    }

    /// Leaves every socket open across an exec of the supervisor (this image keeps them
    /// too, should the exec fail: then [`StackSockets::keep_private`]). The files become
    /// the next image's to remove.
    pub fn carry(&self) -> std::io::Result<CarriedSockets> {
        for fd in self.fds() {
            set_close_on_exec(fd, false)?;
        }
        Ok(self.describe())
    }

    /// Undoes [`StackSockets::carry`]: no process this one starts inherits the sockets.
    pub fn keep_private(&self) {
        for fd in self.fds() {
            let _ = set_close_on_exec(fd, true);
        }
    }

    /// Every socket, the control socket first.
    fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        std::iter::once(self.control.as_fd()).chain(
            self.daemons
                .iter()
                .flat_map(|(_, sockets)| sockets.handed.iter().map(|h| h.fd.as_fd())),
        )
    }

    /// Copies of each daemon's sockets, for the slots (this keeps the originals).
    pub fn daemon_copies(&self) -> std::io::Result<Vec<(&'static str, DaemonSockets)>> {
        self.daemons
            .iter()
            .map(|(name, sockets)| {
                let handed = sockets
                    .handed
                    .iter()
                    .map(|h| {
                        Ok(Handed {
                            name: h.name,
                            url: h.url.clone(),
                            fd: h.fd.try_clone()?,
                        })
                    })
                    .collect::<std::io::Result<_>>()?;
                Ok((
                    *name,
                    DaemonSockets {
                        handed,
                        grpc_path: sockets.grpc_path.clone(),
                    },
                ))
            })
            .collect()
    }

    /// The sockets `settings` ask for, taking a duplicate of each from `carried` when it
    /// is there (same daemon, name and URL) and binding the others. `carried` stays open
    /// (so a failure here loses nothing); close it with [`CarriedSockets::close`] once the
    /// result is in use. A socket the settings no longer ask for closes then: daemon
    /// instances still running hold their own copies until they exit.
    pub fn adopt(settings: &Settings, carried: &CarriedSockets) -> anyhow::Result<Self> {
        let take = |owner: &str, name: &str, url: &str| -> anyhow::Result<Option<OwnedFd>> {
            let Some(c) = carried
                .sockets
                .iter()
                .find(|c| c.owner == owner && c.name == name && c.url == url)
            else {
                return Ok(None);
            };
            Ok(Some(
                sys::duplicate_carried(c.fd).context("duplicating a carried socket")?,
            ))
        };
        let mut files = SocketFiles::default();
        let control = take("control", "control", "")?
            .map(UnixListener::from)
            .context("the control socket was not handed across the exec")?;
        let mut daemons = Vec::new();
        for daemon in securely_core::DAEMONS {
            let mut sockets = DaemonSockets::default();
            for (name, url, bind_it) in wanted_sockets(settings, daemon) {
                let fd = match take(daemon, name, &url)? {
                    Some(fd) => fd,
                    None => bind_it()?,
                };
                sockets.handed.push(Handed { name, url, fd });
            }
            let grpc_path = settings.daemon_socket(daemon);
            let url = format!("unix://{}", grpc_path.display());
            let fd = match take(daemon, names::GRPC, &url)? {
                Some(fd) => fd,
                None => {
                    let grpc = bind::unix(&grpc_path).with_context(|| {
                        format!("binding {daemon}'s socket {}", grpc_path.display())
                    })?;
                    files.0.push(grpc_path.clone());
                    grpc.into()
                }
            };
            sockets.handed.push(Handed {
                name: names::GRPC,
                url,
                fd,
            });
            sockets.grpc_path = grpc_path;
            daemons.push((daemon, sockets));
        }
        files.0.extend(carried.files.iter().cloned());
        Ok(Self {
            control,
            daemons,
            files,
        })
    }

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
            for (name, url, bind_it) in wanted_sockets(settings, daemon) {
                let fd = bind_it()?;
                sockets.handed.push(Handed { name, url, fd });
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

/// A socket to bind, later.
type Binder = Box<dyn FnOnce() -> anyhow::Result<OwnedFd>>;

/// The network sockets `settings` ask for `daemon` (name, URL, how to bind it), in
/// hand-over order; the gRPC socket comes last and apart.
fn wanted_sockets(settings: &Settings, daemon: &str) -> Vec<(&'static str, String, Binder)> {
    let mut wanted: Vec<(&'static str, String, Binder)> = Vec::new();
    match daemon {
        "proxyd" => {
            for (i, addr) in settings.proxy_listen().into_iter().enumerate() {
                wanted.push((
                    names::HTTP,
                    format!("tcp://{addr}"),
                    Box::new(move || {
                        let listener = bind::tcp(addr)
                            .with_context(|| format!("proxy.listen[{i}]: binding TCP {addr}"))?;
                        Ok(listener.into())
                    }),
                ));
            }
            for (i, addr) in settings.proxy_tls_listen().into_iter().enumerate() {
                wanted.push((
                    names::HTTPS,
                    format!("tcp://{addr}"),
                    Box::new(move || {
                        let listener = bind::tcp(addr).with_context(|| {
                            format!("proxy.tls_listen[{i}]: binding TCP {addr}")
                        })?;
                        Ok(listener.into())
                    }),
                ));
            }
        }
        "dnsd" => {
            for (i, addr) in settings.dns_listen().into_iter().enumerate() {
                wanted.push((
                    names::DNS_UDP,
                    format!("udp://{addr}"),
                    Box::new(move || {
                        let udp = bind::udp(addr)
                            .with_context(|| format!("dns.listen[{i}]: binding UDP {addr}"))?;
                        Ok(udp.into())
                    }),
                ));
                wanted.push((
                    names::DNS_TCP,
                    format!("tcp://{addr}"),
                    Box::new(move || {
                        let tcp = bind::tcp(addr)
                            .with_context(|| format!("dns.listen[{i}]: binding TCP {addr}"))?;
                        Ok(tcp.into())
                    }),
                ));
            }
        }
        _ => {}
    }
    wanted
}
