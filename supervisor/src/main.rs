//! `securely`: the supervisor. It binds every listening socket once, starts proxyd, dnsd
//! and queued with their sockets, restarts them when they die, and owns the stack's
//! lifecycle: SIGTERM stops gracefully, SIGINT fast.
//!
//! Start-up runs in named phases, in this order: **load** the settings, **check** them
//! (`-t` stops here), **prepare** the directories, **bind** the sockets, **drop
//! privileges**, **daemonize** (`-d`), then **serve**: start the daemons, report ready,
//! run until asked to stop, **stop** every daemon, and **clean up** sockets and pid file.

mod backoff;
mod child;
mod cli;
mod control;
mod daemonize;
mod pidfile;
mod privileges;
mod slot;
mod sockets;
mod stack;
mod state;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use securely_core::paths;
use securely_core::readiness::{Notice, Notifier};
use securely_core::rpc::{Access, RpcServer};
use securely_core::settings::Settings;
use securely_core::shutdown::{Shutdown, ShutdownKind};
use tonic::service::Routes;

use crate::cli::Args;
use crate::control::ControlService;
use crate::daemonize::StartupReport;
use crate::pidfile::PidFile;
use crate::sockets::StackSockets;
use crate::stack::Stack;

/// How long start-up may take before `-d` gives up and reports failure.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long status calls in flight get when the supervisor exits.
const CONTROL_STOP_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    ensure_stdio();
    // Held until the handlers run (in `serve`), so that a stop requested during start-up
    // is carried out in order instead of killing the process half-way.
    block_stop_signals();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("securely: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Phase: load.
    let (settings, origin) = load_settings(args.conf.as_deref())?;
    let settings = settings.resolve();

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
    if args.upgrade {
        bail!("-u: taking the sockets over from a running instance is not supported yet");
    }

    // Phase: prepare.
    let runtime_dir = settings.runtime_dir();
    let data_dir = settings.data_dir();
    prepare_dirs(&runtime_dir, &data_dir)?;

    // Phase: bind.
    let sockets = StackSockets::bind(&settings)?;

    // Phase: daemonize. From here on a failure is reported to the waiting parent.
    let mut report = if args.daemon || settings.daemon {
        daemonize::daemonize(settings.error_log.as_deref())?
    } else {
        StartupReport::default()
    };
    let served = supervise(settings, sockets, &mut report);
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
) -> anyhow::Result<()> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("securely")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings, sockets, report, pid_file))
}

/// The signals that stop or reload the stack.
pub(crate) fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
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

fn block_stop_signals() {
    // Only fails for an invalid set or `how`, neither of which can happen here.
    let _ = stop_signals().thread_block();
}

/// Opens /dev/null on any of fds 0-2 that is closed, so that no socket is ever bound
/// onto a standard fd (and then redirected away by daemonizing).
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: only asks the kernel whether the fd is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // The lowest free fd is the closed one; leaking it is the point.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                std::mem::forget(null);
            }
        }
    }
}

/// Reads the settings file, or the embedded defaults. Unknown keys are warned about.
fn load_settings(path: Option<&Path>) -> anyhow::Result<(Settings, String)> {
    let Some(path) = path else {
        return Ok((Settings::default(), "the embedded defaults".into()));
    };
    let origin = path.display().to_string();
    let settings = Settings::load_with(path, |key| {
        eprintln!("securely: {origin}: warning: unknown key {key} ignored");
    })?;
    Ok((settings, origin))
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

/// Phase: serve, then stop and clean up.
async fn serve(
    settings: Settings,
    sockets: StackSockets,
    report: &mut StartupReport,
    pid_file: PidFile,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    ignore_signals()?;
    // The handlers are in place: let the signals held since start-up arrive (on this
    // thread; the runtime's workers keep them blocked).
    stop_signals()
        .thread_unblock()
        .context("unblocking signals")?;
    let notifier = Arc::new(Notifier::from_env());

    let StackSockets {
        control,
        daemons,
        files,
    } = sockets;
    let control_path = settings.control_socket();
    let stack = Arc::new(Stack::start(&settings, daemons, &shutdown)?);
    let service = ControlService::new(
        stack.clone(),
        shutdown.clone(),
        Access::new(settings.user.as_deref()),
        control_path.display().to_string(),
    );
    let control_server = RpcServer::start(control, Routes::new(service.into_server()));

    // Wait for every daemon, unless asked to stop first.
    let startup = tokio::select! {
        result = stack.wait_all_ready(STARTUP_TIMEOUT) => result,
        kind = shutdown.wait() => Err(format!("{kind:?} shutdown requested during start-up")),
    };
    match startup {
        Ok(()) => {
            announce_ready(&stack, &notifier);
            report.ready();
        }
        Err(reason) if report.pending() => {
            tracing::error!("start-up failed: {reason}");
            report.failed(&reason);
            shutdown.request(ShutdownKind::Fast);
        }
        Err(reason) => {
            tracing::warn!("start-up incomplete: {reason}; still supervising");
            // Tell systemd once everything is up after all.
            let (stack, notifier, shutdown) = (stack.clone(), notifier.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        result = stack.wait_all_ready(STARTUP_TIMEOUT) => if result.is_ok() {
                            announce_ready(&stack, &notifier);
                            break;
                        },
                        _ = shutdown.wait() => break,
                    }
                }
            });
        }
    }

    // Run until asked to stop; the slots then stop their daemons themselves.
    let kind = shutdown.wait().await;
    tracing::info!(?kind, "stopping");
    notifier.notify(Notice::Stopping);
    stack.wait_stopped().await;

    // Clean up.
    control_server
        .stop(tokio::time::Instant::now() + CONTROL_STOP_TIMEOUT)
        .await;
    drop(files);
    drop(pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// Logs that the stack serves and tells systemd.
fn announce_ready(stack: &Stack, notifier: &Notifier) {
    tracing::info!(pid = std::process::id(), "{}", stack.summary());
    notifier.notify(Notice::Status(stack.summary()));
    notifier.notify(Notice::Ready);
}

/// SIGQUIT (graceful upgrade) and SIGHUP (reload) are not carried out by this version:
/// note them instead of dying (with a core dump, for SIGQUIT) and leaving sockets behind.
fn ignore_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, name) in [
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut signals = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::warn!(
                    "{name}: reload and upgrade are not supported by this version; ignored"
                );
            }
        });
    }
    Ok(())
}
