//! Starting one instance of a daemon: exec its binary with exactly its sockets (from fd
//! 3, announced in `LISTEN_FDS`/`LISTEN_FDNAMES`), its notification socket, and the
//! resolved settings; nothing else is inherited.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{FcntlArg, fcntl};
use securely_core::listen_fds::{self, FIRST_FD};
use securely_core::readiness::NOTIFY_FD_ENV;
use securely_core::settings::SETTINGS_ENV;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// A running daemon instance.
#[derive(Debug)]
pub struct Instance {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
}

/// Closes every fd from `first` up, in the child between fork and exec: even an fd the
/// supervisor itself inherited without close-on-exec never reaches a daemon.
fn close_from(first: RawFd) {
    // SAFETY: close_range and close are async-signal-safe; only fds >= first are closed.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) == 0
        {
            return;
        }
        // Kernels before 5.9: close one by one up to the fd limit.
        let limit = libc::sysconf(libc::_SC_OPEN_MAX);
        let limit = if limit <= 0 {
            1024
        } else {
            limit.min(1 << 20) as RawFd
        };
        for fd in first..limit {
            libc::close(fd);
        }
    }
}

/// Where a daemon's binary lives: beside the supervisor's own executable.
pub fn binary_path(daemon: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the securely executable")?;
    let dir = me.parent().unwrap_or(Path::new("/"));
    Ok(dir.join(securely_core::daemon_binary_name(daemon)))
}

/// Starts `binary` with `sockets` (name, fd) and `settings_yaml`. Returns the instance and
/// the supervisor's end of its notification socket, where `READY=1` and friends arrive.
pub fn spawn(
    binary: &Path,
    sockets: &[(&'static str, BorrowedFd<'_>)],
    settings_yaml: &str,
) -> anyhow::Result<(Instance, UnixStream)> {
    let (ours, theirs) = StdUnixStream::pair().context("creating the notification socket")?;
    // Every fd the child gets, in order: its sockets, then the notification socket.
    let count = sockets.len() + 1;
    let lowest_free = FIRST_FD + count as RawFd;
    // Duplicate each above the target range (close-on-exec), so that placing them at
    // 3, 4, ... in the child can never overwrite one not yet placed.
    let mut staged: Vec<OwnedFd> = Vec::with_capacity(count);
    for fd in sockets
        .iter()
        .map(|(_, fd)| *fd)
        .chain(std::iter::once(std::os::fd::AsFd::as_fd(&theirs)))
    {
        let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(lowest_free))
            .context("duplicating a socket for the child")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        staged.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) });
    }
    let staged_raw: Vec<RawFd> = staged.iter().map(AsRawFd::as_raw_fd).collect();
    let notify_fd = FIRST_FD + sockets.len() as RawFd;

    let mut command = Command::new(binary);
    command
        .env(SETTINGS_ENV, settings_yaml)
        .env(NOTIFY_FD_ENV, notify_fd.to_string())
        .envs(listen_fds::announce(sockets.iter().map(|(name, _)| *name)))
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        // Own process group: a terminal's Ctrl-C reaches the supervisor alone, which
        // then decides for every child.
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, close_range,
    // close, sigprocmask) run.
    unsafe {
        command.pre_exec(move || {
            // The supervisor holds its stop signals blocked on some threads; a daemon
            // starts with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for (i, fd) in staged_raw.iter().enumerate() {
                if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            close_from(lowest_free);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    drop(staged);
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    ours.set_nonblocking(true)?;
    let notices = UnixStream::from_std(ours)?;
    Ok((Instance { child, pid }, notices))
}
