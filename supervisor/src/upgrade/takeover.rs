//! pingora's documented upgrade path: a new supervisor started by hand with `-u` waits on
//! `upgrade_sock`; SIGQUIT to the running one sends it every listening socket over that
//! socket (SCM_RIGHTS), with a description of each. The old supervisor then has its
//! daemons close their sled trees (so the new daemons open them at once), drains and
//! exits, leaving the socket files and the pid file to the new one.
//!
//! Unlike pingora, a send that fails leaves the old supervisor serving, and UDP sockets
//! travel too.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use securely_core::settings::Settings;
use securely_core::shutdown::{Shutdown, ShutdownKind};

use super::peer::Peers;
use crate::serving::Serving;
use crate::signals;
use crate::sockets::{CarriedSocket, CarriedSockets, StackSockets};
use crate::stack::Stack;
use crate::sys;

/// How long `-u` waits for the running supervisor's SIGQUIT.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(300);
/// How long each side waits for the other once connected.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the running supervisor keeps trying a socket file that refuses connections:
/// a `-u` supervisor between its `bind` (the file appears) and its `listen` refuses them
/// for a moment (pingora's own sender retries too). A stale file costs this much.
const OFFER_RETRY_WINDOW: Duration = Duration::from_secs(1);
/// Pause between those tries.
const OFFER_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The most sockets one message carries (the kernel's SCM_MAX_FD is 253).
const MAX_SOCKETS: usize = 253;
/// The largest description accepted.
const MAX_DESCRIPTION: usize = 1 << 20;
/// What the new supervisor answers once it holds the sockets.
const ACK: &[u8] = b"OK";

/// New side (`-u`), in place of binding: waits for the running supervisor's sockets (it
/// sends them on SIGQUIT), binding only those the settings add. A stop signal meanwhile
/// ends the wait (nothing is held).
pub fn take_over(settings: &Settings) -> anyhow::Result<StackSockets> {
    signals::unblock_stop_signals()?;
    let peers = Peers::new(settings.user.as_deref());
    let received = receive(settings, &peers);
    signals::block_stop_signals();
    let (carried, sender) = received?;
    // Acknowledged only once the sockets are ours: until then the running supervisor
    // serves on, whatever fails here.
    let sockets = StackSockets::adopt(settings, &carried);
    carried.close();
    let sockets = sockets?;
    acknowledge(sender)?;
    Ok(sockets)
}

/// Old side (SIGQUIT, SIGHUP): sends every socket to a supervisor started with `-u`, if
/// one waits on upgrade_sock; then has each daemon close its tree and stops this stack
/// gracefully, leaving the socket files and the pid file to the new supervisor.
/// `Ok(false)`: none waits.
pub async fn hand_to_waiting_supervisor(
    serving: &mut Serving,
    stack: &Stack,
    shutdown: &Shutdown,
) -> anyhow::Result<bool> {
    let path = serving.settings.upgrade_socket();
    if !path.exists() {
        return Ok(false);
    }
    let carried = serving.sockets.describe();
    let peers = Peers::new(serving.settings.user.as_deref());
    let offered = tokio::task::spawn_blocking(move || offer(&path, &carried, &peers))
        .await
        .context("sending the sockets")??;
    if !offered {
        return Ok(false);
    }
    tracing::info!(
        "upgrade: the sockets are with the new supervisor; releasing the trees and draining"
    );
    serving.pid_file.disown();
    serving.sockets.files.disown();
    for slot in stack.slots() {
        slot.release().await;
    }
    serving.upgrades.finish(Ok(
        "handed over to the supervisor waiting on upgrade_sock".into()
    ));
    shutdown.request(ShutdownKind::Graceful);
    Ok(true)
}

/// New side (`-u`): waits on `upgrade_sock` for the running supervisor to send its sockets (a
/// connection from a process that is not one of `peers` is refused, and the wait goes
/// on). Returns them with the connection to [`acknowledge`] on once they are in use:
/// until then the running supervisor serves on.
fn receive(settings: &Settings, peers: &Peers) -> anyhow::Result<(CarriedSockets, UnixStream)> {
    let path = &settings.upgrade_socket();
    let listener = securely_core::bind::unix(path)
        .with_context(|| format!("upgrade_sock: binding {}", path.display()))?;
    let _cleanup = RemoveOnDrop(path);
    // Started as root (`sudo securely -u`) beside a stack that already runs as its user:
    // the socket file must be that user's, or the running supervisor cannot connect.
    crate::privileges::give_socket_to_stack_user(
        path,
        settings.user.as_deref(),
        settings.group.as_deref(),
    )?;
    eprintln!(
        "securely: waiting on {} for the running supervisor's sockets (send it SIGQUIT)",
        path.display()
    );
    let stream = accept_within(&listener, TAKEOVER_WAIT, peers)
        .with_context(|| format!("upgrade_sock: no sockets arrived on {}", path.display()))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut description = vec![0u8; MAX_DESCRIPTION];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut description)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("upgrade_sock: receiving the sockets")?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // The kernel just installed these fds in this process.
                fds.extend(received.into_iter().map(sys::take_carried));
            }
        }
        (message.bytes, fds)
    };
    let mut carried: CarriedSockets = serde_json::from_slice(&description[..len])
        .context("upgrade_sock: reading the sockets' description")?;
    if carried.sockets.len() != fds.len() {
        bail!(
            "upgrade_sock: {} sockets described, {} received",
            carried.sockets.len(),
            fds.len()
        );
    }
    // Each socket's `fd` was its index in the message: make it the fd received.
    for (socket, fd) in carried.sockets.iter_mut().zip(fds) {
        socket.fd = fd.into_raw_fd();
    }
    Ok((carried, stream))
}

/// Tells the running supervisor that its sockets are in use here: it drains and exits.
fn acknowledge(mut sender: UnixStream) -> anyhow::Result<()> {
    std::io::Write::write_all(&mut sender, ACK).context("upgrade_sock: acknowledging")
}

/// Connects to the `-u` supervisor waiting on `path`; `None` when there is none (no
/// file, or one that still refuses after [`OFFER_RETRY_WINDOW`]).
fn connect_to_waiter(path: &Path) -> anyhow::Result<Option<UnixStream>> {
    let give_up = Instant::now() + OFFER_RETRY_WINDOW;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(Some(stream)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                if Instant::now() >= give_up {
                    return Ok(None);
                }
                std::thread::sleep(OFFER_RETRY_PAUSE);
            }
            Err(e) => {
                return Err(e).context(format!("upgrade_sock: connecting to {}", path.display()));
            }
        }
    }
}

/// Old side (SIGQUIT): sends `sockets` to a `-u` supervisor waiting on `path`, if it runs
/// as one of `peers` (else nothing is sent, and the error says why). `Ok(false)` when none
/// waits there.
fn offer(path: &Path, sockets: &CarriedSockets, peers: &Peers) -> anyhow::Result<bool> {
    let Some(stream) = connect_to_waiter(path)? else {
        return Ok(false);
    };
    peers.check(&stream).with_context(|| {
        format!(
            "upgrade_sock: refused the supervisor waiting on {}",
            path.display()
        )
    })?;
    if sockets.sockets.len() > MAX_SOCKETS {
        bail!(
            "upgrade_sock: {} sockets are more than one message carries",
            sockets.sockets.len()
        );
    }
    let fds: Vec<RawFd> = sockets.sockets.iter().map(|s| s.fd).collect();
    let described = CarriedSockets {
        sockets: sockets
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| CarriedSocket {
                fd: i as RawFd,
                ..s.clone()
            })
            .collect(),
        files: sockets.files.clone(),
    };
    let description = serde_json::to_vec(&described)?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&description)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("upgrade_sock: sending the sockets")?;
    if sent != description.len() {
        bail!("upgrade_sock: the description was cut short");
    }
    let mut ack = [0u8; 2];
    std::io::Read::read_exact(&mut &stream, &mut ack)
        .context("upgrade_sock: the new supervisor did not acknowledge")?;
    if ack != ACK {
        bail!("upgrade_sock: unexpected answer from the new supervisor");
    }
    Ok(true)
}

/// The first connection on `listener` within `wait` from one of `peers`; others are
/// refused (closed, with the reason on stderr).
fn accept_within(
    listener: &UnixListener,
    wait: Duration,
    peers: &Peers,
) -> anyhow::Result<UnixStream> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let give_up = Instant::now() + wait;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("nothing within {}s", wait.as_secs());
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout =
            PollTimeout::try_from(left.min(Duration::from_secs(1))).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {
                let (stream, _) = listener.accept()?;
                if let Err(refused) = peers.check(&stream) {
                    eprintln!("securely: upgrade_sock: refused a connection: {refused}");
                    continue;
                }
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes the socket file when `-u` is done with it, whatever the outcome.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };

    use super::*;

    #[test]
    fn a_waiter_between_its_bind_and_its_listen_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        // Bound (the file is there) but not listening yet: connections are refused.
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        let listening = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            listen(&fd, Backlog::new(1).unwrap()).unwrap();
            fd
        });
        let stream = connect_to_waiter(&path).unwrap();
        assert!(stream.is_some(), "reached once it listens");
        drop(listening.join());
        // No file: nobody waits, at once.
        assert!(
            connect_to_waiter(&dir.path().join("none"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_stale_socket_file_means_nobody_waits_after_the_retry_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        drop(UnixListener::bind(&path).unwrap());
        let started = Instant::now();
        assert!(connect_to_waiter(&path).unwrap().is_none());
        assert!(started.elapsed() >= OFFER_RETRY_WINDOW);
    }
}
