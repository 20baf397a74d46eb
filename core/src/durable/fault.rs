//! A fault hook for tests: slow or failing disk syncs, in debug builds only.
//!
//! When `SECURELY_TEST_SYNC_FAULT` names a file, every [`super::DiskSync::sync`] of a
//! debug build reads it first and obeys the words it holds: `delay=MS` sleeps that many
//! milliseconds before syncing, `fail` then fails the sync without syncing. A missing or
//! empty file means no fault, so a test can start a daemon normally and switch the fault
//! on (or off) by writing the file. Release builds compile the hook out and ignore the
//! variable: a packaged daemon cannot be made to drop writes by its environment.

use std::io;

/// The variable naming the fault file.
pub const SYNC_FAULT_ENV: &str = "SECURELY_TEST_SYNC_FAULT";

/// Applies the fault the file asks for, if any: sleeps, then fails or not.
#[cfg(debug_assertions)]
pub(super) fn before_sync() -> io::Result<()> {
    let Some(path) = std::env::var_os(SYNC_FAULT_ENV) else {
        return Ok(());
    };
    let words = match std::fs::read_to_string(&path) {
        Ok(words) => words,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut fail = false;
    for word in words.split_whitespace() {
        match word.strip_prefix("delay=").map(str::parse::<u64>) {
            Some(Ok(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            _ if word == "fail" => fail = true,
            _ => tracing::warn!(word, "{SYNC_FAULT_ENV}: unknown word ignored"),
        }
    }
    if fail {
        tracing::warn!("{SYNC_FAULT_ENV}: failing this disk sync");
        return Err(io::Error::other("injected sync failure"));
    }
    Ok(())
}

/// Release builds: no hook.
#[cfg(not(debug_assertions))]
pub(super) fn before_sync() -> io::Result<()> {
    Ok(())
}
