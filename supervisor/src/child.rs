//! One instance of a daemon: exec its binary with exactly its sockets (from fd 3,
//! announced in `LISTEN_FDS`/`LISTEN_FDNAMES`), its notification socket, and the resolved
//! settings; nothing else is inherited.
//!
//! An instance is followed through a pidfd (exit) and its notification socket (notices
//! in, hand-over commands out), never through a `Child` handle: both are plain fds, so an
//! instance survives the supervisor re-executing itself and is adopted again by number.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

use anyhow::Context;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use securely_core::listen_fds::{self, FIRST_FD};
use securely_core::readiness::{Command, NOTIFY_FD_ENV, Notice};
use securely_core::settings::SETTINGS_ENV;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use crate::carried::Exported;

/// A running daemon instance.
#[derive(Debug)]
pub struct Instance {
    /// Its pid.
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    exited: OnceLock<ExitStatus>,
    notices: Mutex<Option<tokio::io::Lines<BufReader<OwnedReadHalf>>>>,
    commands: Mutex<Option<OwnedWriteHalf>>,
    /// Left running on drop (exported, or handed to a retiring task's caller).
    disarmed: bool,
}

impl Instance {
    fn new(pid: u32, channel: StdUnixStream) -> anyhow::Result<Self> {
        let pidfd = pidfd_open(pid).with_context(|| format!("watching pid {pid}"))?;
        channel.set_nonblocking(true)?;
        let (reader, commands) = UnixStream::from_std(channel)?.into_split();
        // SAFETY: the pidfd is an OwnedFd, open and unchanged for the AsyncFd's life.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            pid,
            pidfd,
            exited: OnceLock::new(),
            notices: Mutex::new(Some(BufReader::new(reader).lines())),
            commands: Mutex::new(Some(commands)),
            disarmed: false,
        })
    }

    /// Takes back an instance handed across the supervisor's exec.
    pub fn adopt(exported: Exported) -> anyhow::Result<Self> {
        // SAFETY: the previous image handed this fd to us alone (see `export`).
        let fd = unsafe { OwnedFd::from_raw_fd(exported.notify_fd) };
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        Self::new(exported.pid, StdUnixStream::from(fd))
    }

    /// Takes back an instance that was draining when the supervisor re-executed: only its
    /// exit is followed (its notification socket closed with the previous image).
    pub fn adopt_draining(pid: u32) -> anyhow::Result<Self> {
        let (ours, _theirs) = StdUnixStream::pair()?;
        Self::new(pid, ours)
    }

    /// Keeps the notification socket open across an exec of the supervisor and returns
    /// what the next image needs to adopt the instance. The instance itself runs on.
    pub fn export(mut self) -> anyhow::Result<Exported> {
        let reader = self
            .notices
            .get_mut()
            .take()
            .context("the notification socket is already closed")?
            .into_inner()
            .into_inner();
        let writer = self
            .commands
            .get_mut()
            .take()
            .context("the notification socket is already closed")?;
        let stream = reader.reunite(writer)?.into_std()?;
        let fd: OwnedFd = stream.into();
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let notify_fd = fd.as_raw_fd();
        std::mem::forget(fd);
        self.disarmed = true;
        Ok(Exported {
            pid: self.pid,
            notify_fd,
        })
    }

    /// Leaves the instance running when this handle is dropped (the next image of the
    /// supervisor adopts it by pid).
    pub fn disarm(mut self) -> u32 {
        self.disarmed = true;
        self.pid
    }

    /// The next notice; `None` once the instance closed its end (it is exiting).
    pub async fn next_notice(&self) -> Option<Notice> {
        let mut notices = self.notices.lock().await;
        loop {
            let lines = notices.as_mut()?;
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(notice) = Notice::parse(&line) {
                        return Some(notice);
                    }
                }
                _ => {
                    *notices = None;
                    return None;
                }
            }
        }
    }

    /// Sends a hand-over command; false when the instance no longer listens.
    pub async fn command(&self, command: Command) -> bool {
        let line = format!("{}\n", command.to_line());
        let mut commands = self.commands.lock().await;
        match commands.as_mut() {
            Some(commands) => commands.write_all(line.as_bytes()).await.is_ok(),
            None => false,
        }
    }

    /// Waits for the instance to exit (and reaps it); returns the same status when
    /// called again.
    pub async fn wait(&self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.exited.get() {
                return Ok(*status);
            }
            let mut ready = self.pidfd.readable().await?;
            match reap(self.pid)? {
                Some(status) => {
                    let _ = self.exited.set(status);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Whether it has exited (reaping it if so), without waiting.
    pub fn try_reap(&self) -> bool {
        if self.exited.get().is_some() {
            return true;
        }
        match reap(self.pid) {
            Ok(Some(status)) => {
                let _ = self.exited.set(status);
                true
            }
            Ok(None) => false,
            // Not our child (any more): nothing to wait for.
            Err(_) => true,
        }
    }

    /// Sends `signal`, unless the instance has been reaped (through the pidfd, so a
    /// recycled pid is never hit).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if self.exited.get().is_some() {
            return;
        }
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill(&self) -> std::io::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait().await
    }
}

impl Drop for Instance {
    /// An instance nobody follows any more (a failed start, a panic) is killed and
    /// reaped rather than left to drain unsupervised as a zombie-to-be.
    fn drop(&mut self) {
        if self.disarmed || self.exited.get().is_some() {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        // SAFETY: waitpid on our own child, which SIGKILL ends promptly.
        unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0) };
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Reaps `pid` if it has exited (this pid only: other children are not touched).
fn reap(pid: u32) -> std::io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG.
    let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    match reaped {
        0 => Ok(None),
        r if r > 0 => Ok(Some(ExitStatus::from_raw(status))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Marks every fd from `first` up close-on-exec, in the child between fork and exec:
/// even an fd the supervisor itself inherited without close-on-exec never reaches a
/// daemon. (Marked, not closed: std's pipe that reports a failed exec must stay open
/// until the exec.)
fn close_on_exec_from(first: RawFd) {
    // SAFETY: close_range and fcntl are async-signal-safe; only fds >= first change.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        // Kernels before 5.11: one by one up to the fd limit.
        let limit = libc::sysconf(libc::_SC_OPEN_MAX);
        let limit = if limit <= 0 {
            1024
        } else {
            limit.min(1 << 20) as RawFd
        };
        for fd in first..limit {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

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
        let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(lowest_free))
            .context("duplicating a socket for the child")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        staged.push(unsafe { OwnedFd::from_raw_fd(raw) });
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
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, close_range,
    // fcntl, sigprocmask) run.
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
            close_on_exec_from(lowest_free);
            Ok(())
        });
    }
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

/// "exited with status 1", "killed by SIGKILL", ...
pub fn describe_exit(exit: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}
