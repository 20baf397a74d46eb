//! `securely`: the supervisor. It binds every listening socket once, starts proxyd, dnsd
//! and queued with their sockets, hands them over to new instances on request, restarts
//! them when they die, and owns the stack's lifecycle: SIGTERM stops gracefully, SIGINT
//! fast, SIGQUIT (or SIGHUP, or `securelyctl reload`) upgrades the stack in place.
//!
//! Start-up runs in named phases, in this order: **load** the settings, **check** them
//! (`-t` stops here), **prepare** the directories, **bind** the sockets (or, with `-u`,
//! take them over), **daemonize** (`-d`), write the **pid file**, **drop privileges**,
//! then **serve** ([`serve`]): start the daemons, report ready, run until asked to stop
//! or upgrade, **stop** every daemon, and **clean up** sockets and pid file. After an
//! upgrade's exec ([`upgrade`]) the new image **resumes** instead: it adopts the sockets
//! and daemons it was handed, then serves.
//!
//! The only unsafe code is in [`sys`] (fork, between fork and exec, fds taken by
//! number).

#![deny(unsafe_code)]

mod backoff;
mod carried;
mod child;
mod cli;
mod control;
mod daemonize;
mod events;
mod handover;
mod journal;
mod load;
mod operation;
mod pidfile;
mod privileges;
mod serve;
mod serving;
mod signals;
mod slot;
mod sockets;
mod spawn;
mod spec;
mod stack;
mod state;
mod stopping;
mod sys;
mod trigger;
mod upgrade;
mod upgrades;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use securely_core::paths;
use securely_core::settings::Settings;

use crate::carried::CarriedState;
use crate::cli::Args;
use crate::daemonize::StartupReport;
use crate::operation::Operations;
use crate::pidfile::PidFile;
use crate::serving::{Beginning, Serving};
use crate::sockets::StackSockets;
use crate::upgrades::Upgrades;

fn main() -> ExitCode {
    ensure_stdio();
    // Held until the handlers run (in `serve`), so that a stop requested during start-up
    // is carried out in order instead of killing the process half-way.
    signals::block_stop_signals();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("securely: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    // `-d` changes directory to /: an upgrade reads the file again by this path.
    if let Some(conf) = &args.conf {
        args.conf = Some(std::path::absolute(conf).context("locating the settings file")?);
    }
    // The path this binary was started from: an upgrade re-executes whatever is installed
    // there by then.
    let exe = std::env::current_exe().context("locating the securely executable")?;
    if let Some(carried) = CarriedState::take_from_env() {
        // Phase: resume.
        let serving = upgrade::resume(args.conf, exe, carried?)?;
        signals::runtime()?.block_on(serve::serve(serving, &mut StartupReport::default()))?;
        return Ok(ExitCode::SUCCESS);
    }

    // Phase: load.
    let (settings, origin) = load::load(args.conf.as_deref())?;

    // Phase: check.
    if let Err(errors) = settings.validate() {
        for error in errors {
            eprintln!("securely: {origin}: {error}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.test {
        println!("securely: settings in {origin} are valid");
        return Ok(ExitCode::SUCCESS);
    }

    // Phase: prepare.
    prepare_dirs(&settings.runtime_dir(), &settings.data_dir())?;

    // Phase: bind, or with `-u` take the sockets over from the running supervisor.
    let sockets = if args.upgrade {
        upgrade::takeover::take_over(&settings)?
    } else {
        StackSockets::bind(&settings)?
    };

    // Phase: daemonize. From here on a failure is reported to the waiting parent.
    let mut report = if args.daemon || settings.daemon {
        daemonize::daemonize(settings.error_log.as_deref())?
    } else {
        StartupReport::default()
    };
    let served = supervise(settings, sockets, &mut report, exe, args.conf);
    if let Err(e) = &served {
        report.failed(&format!("{e:#}"));
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Phases after daemonizing: pid file, drop privileges, logging, serve.
fn supervise(
    settings: Settings,
    sockets: StackSockets,
    report: &mut StartupReport,
    exe: PathBuf,
    conf: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Phase: pid file.
    let pid_path = settings
        .pid_file
        .clone()
        .unwrap_or_else(|| settings.runtime_dir().join("securely.pid"));
    let pid_file = PidFile::write(&pid_path)?;

    // Phase: drop privileges.
    let (runtime_dir, data_dir) = (settings.runtime_dir(), settings.data_dir());
    privileges::drop_privileges(
        settings.user.as_deref(),
        settings.group.as_deref(),
        &[&runtime_dir, &data_dir, &pid_path],
    )?;

    securely_core::logging::init(
        "securely",
        settings.error_log.as_deref(),
        securely_core::logging::DEFAULT_FILTER,
    );
    let serving = Serving {
        settings,
        sockets,
        pid_file,
        exe,
        conf,
        upgrades: Arc::new(Upgrades::default()),
        operations: Operations::default(),
        adopted: HashMap::new(),
        next: Beginning::Start,
        started: Instant::now(),
    };
    // Phase: serve.
    signals::runtime()?.block_on(serve::serve(serving, report))
}

/// Opens /dev/null on any of fds 0-2 that is closed, so that no socket is ever bound
/// onto a standard fd (and then redirected away by daemonizing).
fn ensure_stdio() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    // An open takes the lowest free fd: while that is a standard one, keep it open.
    while let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        if null.as_raw_fd() > 2 {
            break;
        }
        // Left open for the process's life: that is the point.
        let _ = null.into_raw_fd();
    }
}

fn prepare_dirs(runtime_dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    paths::create_runtime_dir(runtime_dir)
        .with_context(|| format!("runtime_dir: creating {}", runtime_dir.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(paths::DATA_DIR_MODE)
        .create(data_dir)
        .with_context(|| format!("data_dir: creating {}", data_dir.display()))
}
