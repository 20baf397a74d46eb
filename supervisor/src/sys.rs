//! The supervisor's only unsafe code (the rest of the crate is `deny(unsafe_code)`), each
//! operation sound for the reason its SAFETY comment gives:
//!
//! - [`fork`] into the background, before any thread exists;
//! - [`place_fds_at_exec`]: between fork and exec of a daemon, put its fds at 3, 4, ...;
//! - [`take_carried`] and [`duplicate_carried`]: fds that an earlier image of the
//!   supervisor (across an exec) or the kernel (SCM_RIGHTS) handed this process by number;
//! - [`take_env`]: the variable carrying them, read during single-threaded start-up;
//! - [`watch_pidfd`]: a pidfd registered with the runtime's reactor.

#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::ForkResult;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Forks. Called only from `-d`'s start-up, before the runtime or any other thread exists.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the process is single-threaded here (the runtime starts after
    // daemonizing), so the child may run any code, not only async-signal-safe calls.
    unsafe { nix::unistd::fork() }
}

/// Reads `key` and removes it from the environment. Called only at start-up, before the
/// runtime or any other thread exists.
pub fn take_env(key: &str) -> Option<String> {
    let value = std::env::var(key).ok()?;
    // SAFETY: single-threaded start-up: no other thread reads or writes the environment.
    unsafe { std::env::remove_var(key) };
    Some(value)
}

/// Takes ownership of `fd`, open in this process and handed to it alone: by the previous
/// image of the supervisor (named in the state it carried across the exec), or by the
/// kernel (SCM_RIGHTS, just received). The caller takes each such number once.
pub fn take_carried(fd: RawFd) -> OwnedFd {
    // SAFETY: see above: the fd is open and nothing else in this process owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A close-on-exec duplicate of `fd`, a carried fd that stays open (and is closed later
/// through [`take_carried`]).
pub fn duplicate_carried(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the fd is open for as long as the carried state is (the caller closes it
    // only afterwards), and the borrow ends with this duplication.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Watches `pidfd` on the current runtime: readable once the process has exited.
pub fn watch_pidfd(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open fd that stays open, and the same, for as long as
    // the AsyncFd owns it; its `as_raw_fd` never changes, and no caller replaces it
    // (nothing calls `get_mut`).
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Has `command` place `staged` (close-on-exec fds above `lowest_free`) at fds 3, 4, ...
/// in the child, unblock every signal, and mark every other fd from `lowest_free` up
/// close-on-exec: the child gets exactly those fds (and 0-2), even ones the supervisor
/// inherited without close-on-exec. (Marked, not closed: std's pipe that reports a
/// failed exec must stay open until the exec.)
pub fn place_fds_at_exec(command: &mut Command, staged: Vec<RawFd>, lowest_free: RawFd) {
    let first = securely_core::listen_fds::FIRST_FD;
    // SAFETY: between fork and exec only async-signal-safe calls run (sigemptyset,
    // pthread_sigmask, dup2, close_range, sysconf, fcntl); `staged` is moved in and only
    // read; no allocation happens.
    unsafe {
        command.pre_exec(move || {
            // The supervisor holds its stop signals blocked on some threads; a daemon
            // starts with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for (i, fd) in staged.iter().enumerate() {
                if libc::dup2(*fd, first + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            close_on_exec_from(lowest_free);
            Ok(())
        });
    }
}

/// Marks every fd from `first` up close-on-exec. Only for the child between fork and exec.
///
/// # Safety
/// Async-signal-safe; touches only fds >= `first`.
unsafe fn close_on_exec_from(first: RawFd) {
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
