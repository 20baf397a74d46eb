//! Taking what the exec handed down: announcement variables and the fds they announce.
//! This is the only unsafe code in `securely-core`; everything else is `deny(unsafe_code)`.
//!
//! Both operations are sound only at start-up, before this process has threads that read
//! the environment, and for fds announced to this process alone. Their only callers are
//! [`InheritedFds::from_env`](crate::listen_fds::InheritedFds::from_env) and
//! [`Notifier::from_env`](crate::readiness::Notifier::from_env), which
//! [`Daemon::start`](crate::daemon::Daemon::start) runs first thing in `main`.

#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Reads `key` and removes it from the environment, so that nothing this process starts
/// inherits the announcement.
pub(crate) fn take_env(key: &str) -> Option<String> {
    let value = std::env::var(key).ok()?;
    // SAFETY: called during single-threaded start-up (see the module docs): no other
    // thread reads or writes the environment meanwhile.
    unsafe { std::env::remove_var(key) };
    Some(value)
}

/// Whether `fd` is open in this process (`fcntl(F_GETFD)` succeeds).
pub(crate) fn is_open(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: the borrow lives only for this one `fcntl`, which touches no memory and
    // fails with EBADF if the number is not open; nothing is closed or owned here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// Takes ownership of an announced, open `fd` and marks it close-on-exec (the parent's
/// `dup2` cleared the flag; nothing this process starts should inherit it).
pub(crate) fn claim(fd: RawFd) -> Option<OwnedFd> {
    if fd <= 2 || !is_open(fd) {
        return None;
    }
    // SAFETY: the fd is open (checked above) and was announced to this process alone by
    // a variable that the caller has just taken out of the environment, so it is claimed
    // once and nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(fd)
}
