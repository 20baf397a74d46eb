//! Starting an instance of a daemon: exec its binary with exactly its sockets (from fd 3,
//! announced in `LISTEN_FDS`/`LISTEN_FDNAMES`), its notification socket, and the resolved
//! settings; nothing else is inherited.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use securely_core::listen_fds::{self, FIRST_FD};
use securely_core::readiness::NOTIFY_FD_ENV;
use securely_core::settings::SETTINGS_ENV;

use crate::child::Instance;
use crate::sys;

/// Where a daemon's binary lives: beside the supervisor's own executable.
pub fn binary_path(supervisor_exe: &Path, daemon: &str) -> PathBuf {
    let dir = supervisor_exe.parent().unwrap_or(Path::new("/"));
    dir.join(securely_core::daemon_binary_name(daemon))
}

/// Starts `binary` with `sockets` (name, fd) and `settings_yaml`.
pub fn spawn(
    binary: &Path,
    sockets: &[(&'static str, BorrowedFd<'_>)],
    settings_yaml: &str,
) -> anyhow::Result<Instance> {
    use std::os::unix::process::CommandExt;
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
        .chain(std::iter::once(theirs.as_fd()))
    {
        staged.push(
            rustix::io::fcntl_dupfd_cloexec(fd, lowest_free)
                .context("duplicating a socket for the child")?,
        );
    }
    let staged_raw: Vec<RawFd> = staged.iter().map(AsRawFd::as_raw_fd).collect();
    let notify_fd = FIRST_FD + sockets.len() as RawFd;

    let mut command = std::process::Command::new(binary);
    command
        .env(SETTINGS_ENV, settings_yaml)
        .env(NOTIFY_FD_ENV, notify_fd.to_string())
        .envs(listen_fds::announce(sockets.iter().map(|(name, _)| *name)))
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove(crate::carried::STATE_ENV)
        .stdin(std::process::Stdio::null())
        // Own process group: a terminal's Ctrl-C reaches the supervisor alone, which
        // then decides for every child.
        .process_group(0);
    sys::place_fds_at_exec(&mut command, staged_raw, lowest_free);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    drop(staged);
    drop(theirs);
    // The pidfd (below) waits for and reaps the child; the handle is kept only in case
    // that cannot be set up.
    let pid = child.id();
    match Instance::new(pid, ours) {
        Ok(instance) => Ok(instance),
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
