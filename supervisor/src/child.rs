//! One instance of a daemon, followed through a pidfd (its exit) and its notification
//! socket (notices in, hand-over commands out), never through a `Child` handle: both are
//! plain fds, so an instance survives the supervisor re-executing itself and is adopted
//! again by number.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};
use securely_core::readiness::{Command, Notice};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use crate::carried::Exported;
use crate::events::SlotRecorder;
use crate::sys;

/// A running daemon instance. Dropped while it runs (a failed start, a panic), it is
/// killed and reaped in the background: dropping never blocks.
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
    /// Where the phases it reports are published.
    reporter: Option<Arc<SlotRecorder>>,
}

/// How long the notices still in the socket of an instance that exited are read for
/// (its end is closed, so they are there at once; a copy of its end held by another
/// process would keep the socket open).
const NOTICE_FLUSH: Duration = Duration::from_millis(200);

impl Instance {
    /// Follows `pid`, a child of this process, talking to it over `channel`.
    pub fn new(pid: u32, channel: StdUnixStream) -> anyhow::Result<Self> {
        let pidfd = pidfd_open(pid).with_context(|| format!("watching pid {pid}"))?;
        channel.set_nonblocking(true)?;
        let (reader, commands) = UnixStream::from_std(channel)?.into_split();
        let pidfd = sys::watch_pidfd(pidfd)?;
        Ok(Self {
            pid,
            pidfd,
            exited: OnceLock::new(),
            notices: Mutex::new(Some(BufReader::new(reader).lines())),
            commands: Mutex::new(Some(commands)),
            disarmed: false,
            reporter: None,
        })
    }

    /// Publishes the phases the instance reports on `recorder` (they are read along with
    /// its other notices).
    pub fn reporting_to(mut self, recorder: Arc<SlotRecorder>) -> Self {
        self.reporter = Some(recorder);
        self
    }

    /// Takes back an instance handed across the supervisor's exec.
    pub fn adopt(exported: Exported) -> anyhow::Result<Self> {
        let fd = sys::take_carried(exported.notify_fd);
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
        let notify_fd = fd.into_raw_fd();
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

    /// The next notice; `None` once the instance closed its end (it is exiting). The
    /// phases it reports on the way are published, not returned.
    pub async fn next_notice(&self) -> Option<Notice> {
        let mut notices = self.notices.lock().await;
        loop {
            let lines = notices.as_mut()?;
            match lines.next_line().await {
                Ok(Some(line)) => match Notice::parse(&line) {
                    Some(Notice::Phase { phase, detail }) => {
                        if let Some(reporter) = &self.reporter {
                            reporter.daemon_phase(self.pid, phase, detail);
                        }
                    }
                    Some(notice) => return Some(notice),
                    None => {}
                },
                _ => {
                    *notices = None;
                    return None;
                }
            }
        }
    }

    /// Reads what is left of the notices of an instance that exited (bounded by
    /// [`NOTICE_FLUSH`]), so that the phases it reported last come before its exit.
    pub async fn flush_notices(&self) {
        let rest = async { while self.next_notice().await.is_some() {} };
        let _ = tokio::time::timeout(NOTICE_FLUSH, rest).await;
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
    pub fn signal(&self, signal: Signal) {
        if self.exited.get().is_some() {
            return;
        }
        // Fails only once the process is gone: nothing to signal then.
        let _ = rustix::process::pidfd_send_signal(self.pidfd.get_ref(), signal);
    }

    /// SIGKILL, then reap.
    pub async fn kill(&self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::KILL);
        self.wait().await
    }
}

impl Drop for Instance {
    /// An instance nobody follows any more (a failed start, a panic) is killed rather
    /// than left to drain unsupervised, and reaped without blocking: at once if it is
    /// already gone, else by a background task that waits on a copy of its pidfd (as
    /// tokio reaps an orphaned child), or a thread outside a runtime.
    fn drop(&mut self) {
        if self.disarmed || self.exited.get().is_some() {
            return;
        }
        self.signal(Signal::KILL);
        if self.try_reap() {
            return;
        }
        match self.pidfd.get_ref().try_clone() {
            Ok(pidfd) => reap_in_background(self.pid, pidfd),
            Err(e) => tracing::warn!(pid = self.pid, "cannot reap the killed instance: {e}"),
        }
    }
}

/// Reaps `pid`, already killed, once its `pidfd` says it exited.
fn reap_in_background(pid: u32, pidfd: OwnedFd) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        std::thread::spawn(move || {
            let _ = rustix::process::waitpid(pid_of(pid), WaitOptions::empty());
        });
        return;
    };
    runtime.spawn(async move {
        if let Ok(pidfd) = sys::watch_pidfd(pidfd) {
            let _ = pidfd.readable().await;
        }
        if let Err(e) = reap(pid) {
            tracing::debug!(pid, "reaping the killed instance: {e}");
        }
    });
}

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// A pidfd (close-on-exec, as pidfd_open makes every one) for child `pid`.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = pid_of(pid).ok_or_else(|| std::io::Error::other(format!("bad pid {pid}")))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Reaps `pid` if it has exited (this pid only: other children are not touched).
fn reap(pid: u32) -> std::io::Result<Option<ExitStatus>> {
    let Some(pid) = pid_of(pid) else {
        return Ok(None);
    };
    let reaped = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)?;
    Ok(reaped.map(|(_, status)| ExitStatus::from_raw(status.as_raw())))
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A child of this process that runs until killed, followed as an [`Instance`].
    fn sleeper() -> Instance {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep");
        let (ours, _theirs) = StdUnixStream::pair().unwrap();
        // The Instance follows and reaps it from here on; std's handle neither kills nor
        // waits when dropped.
        Instance::new(child.id(), ours).expect("follow the child")
    }

    /// Whether `pid` is still there, zombie or not (a reaped child is not).
    fn present(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn dropped_on_a_runtime_it_is_killed_and_reaped_in_the_background() {
        let instance = sleeper();
        let pid = instance.pid;
        drop(instance);
        let give_up = Instant::now() + Duration::from_secs(5);
        while present(pid) {
            assert!(Instant::now() < give_up, "pid {pid} was not reaped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn dropped_off_a_runtime_it_is_killed_and_reaped_too() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let instance = runtime.block_on(async { sleeper() });
        let pid = instance.pid;
        drop(runtime);
        drop(instance);
        let give_up = Instant::now() + Duration::from_secs(5);
        while present(pid) {
            assert!(Instant::now() < give_up, "pid {pid} was not reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn wait_reports_how_it_ended_and_signals_after_that_hit_nothing() {
        let instance = sleeper();
        instance.signal(Signal::TERM);
        let exit = instance.wait().await;
        assert_eq!(describe_exit(exit), "killed by SIGTERM");
        assert!(instance.try_reap());
        instance.signal(Signal::KILL);
        assert_eq!(describe_exit(instance.wait().await), "killed by SIGTERM");
    }
}
