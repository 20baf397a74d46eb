//! The supervisor's signals. SIGTERM and SIGINT stop the stack (through
//! [`securely_core::shutdown`]); SIGQUIT and SIGHUP upgrade it. All four are held blocked
//! from the first instruction until the serve phase's handlers run, and again across an
//! upgrade's exec, so that one arriving meanwhile is carried out in order, never lost.
//! Only the main thread ever takes them: the runtime's threads keep them blocked.

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

/// The signals that stop or upgrade the stack.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// Holds the stop signals pending on this thread.
pub fn block_stop_signals() {
    // Only fails for an invalid set or `how`, neither of which can happen here.
    let _ = stop_signals().thread_block();
}

/// Lets the stop signals arrive on this thread.
pub fn unblock_stop_signals() -> anyhow::Result<()> {
    stop_signals()
        .thread_unblock()
        .context("unblocking signals")
}

/// The supervisor's runtime. Its threads (workers and blocking pool alike) keep the stop
/// signals blocked, so that only the main thread takes them: then blocking them there
/// before an upgrade's exec leaves any later one pending for the next image.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("securely")
        .on_thread_start(block_stop_signals)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
