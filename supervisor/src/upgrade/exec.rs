//! Phase 3 of an upgrade: the supervisor's image is replaced in place (same pid, same
//! children), the carried state in its environment.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;

use crate::carried::{CarriedState, STATE_ENV};

/// Phase 3: replaces this process's image with `exe`, same arguments, `state` in the
/// environment. Only returns on failure. Plain `execve` (not `Command::exec`, which
/// would unblock the held signals first).
pub fn exec(exe: &Path, state: &CarriedState) -> anyhow::Error {
    let state = match serde_json::to_string(state) {
        Ok(state) => state,
        Err(e) => return anyhow::anyhow!("writing the state: {e}"),
    };
    let to_c = |bytes: &[u8]| CString::new(bytes).context("a NUL byte in an argument");
    let build = || -> anyhow::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = to_c(exe.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for arg in std::env::args_os().skip(1) {
            argv.push(to_c(arg.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            if key == STATE_ENV {
                continue;
            }
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            envp.push(to_c(&entry)?);
        }
        envp.push(to_c(format!("{STATE_ENV}={state}").as_bytes())?);
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    match nix::unistd::execve(&path, &argv, &envp) {
        Err(e) => anyhow::anyhow!("re-executing {}: {e}", exe.display()),
    }
}
