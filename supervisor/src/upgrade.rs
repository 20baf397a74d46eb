//! The whole-stack upgrade (SIGQUIT, SIGHUP, `securelyctl reload`), without changing the
//! supervisor's PID:
//!
//! 1. **check** the installed binaries and the settings file: the supervisor binary runs
//!    `-t` on the file, each daemon binary answers `--version`. A failure changes nothing;
//! 2. **carry**: stop the control server (the `Reload` call that asked has its answer),
//!    hold the stop signals (one arriving now waits, pending, for the next image), end
//!    supervision without stopping the daemons, and write the state (sockets, instances,
//!    this upgrade) into [`STATE_ENV`], every fd in it left open across the exec;
//! 3. **exec** the supervisor binary in place, with the same arguments;
//! 4. the new image **adopts** the sockets (binding any new listener the settings ask for,
//!    closing any they dropped) and the instances, then **hands each daemon over** to its
//!    new binary, one at a time (see [`crate::handover`]).
//!
//! Should the exec itself fail, the same process adopts its own state back and serves on.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use securely_proto::supervisor::UpgradeStatus;

use crate::slot::ExportedSlot;
use crate::sockets::CarriedSockets;

/// The variable carrying the state across the exec.
pub const STATE_ENV: &str = "SECURELY_UPGRADE_STATE";
/// How long each binary may take to answer the check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// What one image of the supervisor hands the next. Every field has a default, so an
/// image reads the state of an older one (fields it added are then empty).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CarriedState {
    /// Every listening socket, open by number.
    pub sockets: CarriedSockets,
    /// Each daemon's instances, by daemon.
    pub slots: HashMap<String, ExportedSlot>,
    /// The upgrade in progress.
    pub upgrade: UpgradeRecord,
    /// The settings the stack ran with, as YAML (used again if the new ones cannot be).
    pub previous_settings: String,
    /// The pid file (already written, same pid).
    pub pid_file: PathBuf,
    /// Milliseconds the supervisor had been up.
    pub uptime_ms: u64,
}

impl CarriedState {
    /// The state left by the previous image, if this process is one's exec.
    pub fn take_from_env() -> Option<anyhow::Result<Self>> {
        let text = std::env::var(STATE_ENV).ok()?;
        // SAFETY: single-threaded start-up.
        unsafe { std::env::remove_var(STATE_ENV) };
        Some(serde_json::from_str(&text).context("reading the state handed across the exec"))
    }
}

/// The last upgrade, as `securelyctl status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UpgradeRecord {
    /// Counts upgrades (0: none yet).
    pub id: u64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed, or what it did.
    pub detail: String,
    /// Milliseconds since it started, when it was carried across the exec.
    pub elapsed_ms: u64,
    #[serde(skip)]
    started: Option<Instant>,
}

impl UpgradeRecord {
    fn took_ms(&self) -> u64 {
        match (self.state.as_str(), self.started) {
            ("running", Some(started)) => started.elapsed().as_millis() as u64,
            _ => self.elapsed_ms,
        }
    }
}

/// The upgrade record, shared by the upgrade and the control service.
#[derive(Debug, Default)]
pub struct Upgrades {
    record: Mutex<UpgradeRecord>,
}

impl Upgrades {
    /// Continues the record carried across the exec.
    pub fn carried(mut record: UpgradeRecord) -> Self {
        record.started = Some(Instant::now() - Duration::from_millis(record.elapsed_ms));
        Self {
            record: Mutex::new(record),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpgradeRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new upgrade; returns its id.
    pub fn begin(&self) -> u64 {
        let mut record = self.lock();
        record.id += 1;
        record.state = "running".into();
        record.detail = "checking the binaries and the settings".into();
        record.started = Some(Instant::now());
        record.elapsed_ms = 0;
        record.id
    }

    /// Notes progress.
    pub fn progress(&self, detail: impl Into<String>) {
        self.lock().detail = detail.into();
    }

    /// Ends the upgrade.
    pub fn finish(&self, result: Result<String, String>) {
        let mut record = self.lock();
        record.elapsed_ms = record
            .started
            .map(|s| s.elapsed().as_millis() as u64)
            .unwrap_or(0);
        let (state, detail) = match result {
            Ok(detail) => ("done", detail),
            Err(reason) => ("failed", reason),
        };
        record.state = state.into();
        record.detail = detail;
    }

    /// The record, to carry across the exec.
    pub fn snapshot(&self) -> UpgradeRecord {
        let mut record = self.lock().clone();
        record.elapsed_ms = record.took_ms();
        record
    }

    /// The wire form.
    pub fn to_proto(&self) -> UpgradeStatus {
        let record = self.lock();
        UpgradeStatus {
            id: record.id,
            state: record.state.clone(),
            detail: record.detail.clone(),
            took_ms: record.took_ms(),
        }
    }
}

/// Phase 1: runs the installed supervisor binary's `-t` on the settings file, and asks
/// each daemon binary for its version, all at once. The error names the first binary
/// that failed and what it said.
pub async fn check(exe: &Path, conf: Option<&Path>, daemons: &[PathBuf]) -> Result<(), String> {
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
        check
            .await
            .map_err(|e| format!("the check failed: {e}"))??;
    }
    Ok(())
}

async fn run_check(binary: PathBuf, args: Vec<std::ffi::OsString>) -> Result<(), String> {
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
        .map_err(|_| format!("{name} did not answer within {}s", CHECK_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(format!(
        "{name} {} failed ({}): {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        crate::child::describe_exit(Ok(output.status)),
        if said.is_empty() {
            "no output".to_string()
        } else {
            said.join("; ")
        }
    ))
}

/// Phase 3: replaces this process's image with `exe`, same arguments, `state` in the
/// environment. Only returns on failure. Plain `execv` (not `Command::exec`, which
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
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and pointer arrays that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    anyhow::anyhow!(
        "re-executing {}: {}",
        exe.display(),
        std::io::Error::last_os_error()
    )
}
