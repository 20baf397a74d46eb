//! Phase 1 of an upgrade: the installed binaries and the settings file are tried before
//! anything changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::carried::STATE_ENV;
use crate::trigger::CheckFailed;

/// How long each binary may take to answer the check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Phase 1: runs the installed supervisor binary's `-t` on the settings file, and asks
/// each daemon binary for its version, all at once. The error names the first binary
/// that failed and what it said.
pub async fn check(
    exe: &Path,
    conf: Option<&Path>,
    daemons: &[PathBuf],
) -> Result<(), CheckFailed> {
    let mut args: Vec<std::ffi::OsString> = vec!["-t".into()];
    if let Some(conf) = conf {
        args.extend(["-c".into(), conf.as_os_str().to_owned()]);
    }
    let mut checks = vec![tokio::spawn(run_check(exe.to_path_buf(), args))];
    for daemon in daemons {
        checks.push(tokio::spawn(run_check(
            daemon.clone(),
            vec!["--version".into()],
        )));
    }
    for check in checks {
        check.await??;
    }
    Ok(())
}

async fn run_check(binary: PathBuf, args: Vec<std::ffi::OsString>) -> Result<(), CheckFailed> {
    let name = binary.display().to_string();
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(&args)
        .env_remove(STATE_ENV)
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CHECK_TIMEOUT, command.output())
        .await
        .map_err(|_| CheckFailed::Timeout {
            binary: name.clone(),
            seconds: CHECK_TIMEOUT.as_secs(),
        })?
        .map_err(|source| CheckFailed::CannotRun {
            binary: name.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(CheckFailed::Failed {
        binary: name,
        args: args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        exit: crate::child::describe_exit(Ok(output.status)),
        said: if said.is_empty() {
            "no output".to_string()
        } else {
            said.join("; ")
        },
    })
}
