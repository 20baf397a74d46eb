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

use std::path::{Path, PathBuf};
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
/// Mode of a data directory the supervisor creates.
const DATA_DIR_MODE: u32 = 0o750;

fn main() -> ExitCode {
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

    // Phase: drop privileges.
    let socket_paths = sockets.paths();
    let mut owned: Vec<&Path> = vec![&runtime_dir, &data_dir];
    owned.extend(socket_paths.iter().map(PathBuf::as_path));
    privileges::drop_privileges(settings.user.as_deref(), settings.group.as_deref(), &owned)?;

    // Phase: daemonize.
    let report = if args.daemon || settings.daemon {
        daemonize::daemonize(settings.error_log.as_deref())?
    } else {
        StartupReport::default()
    };

    securely_core::logging::init(
        "securely",
        settings.error_log.as_deref(),
        securely_core::logging::DEFAULT_FILTER,
    );
    let pid_path = settings
        .pid_file
        .clone()
        .unwrap_or_else(|| runtime_dir.join("securely.pid"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("securely")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = report;
    let served = runtime.block_on(serve(settings, sockets, &mut report, pid_path));
    if let Err(e) = &served {
        report.failed(&format!("{e:#}"));
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the settings file, or the embedded defaults. Unknown keys are warned about.
fn load_settings(path: Option<&Path>) -> anyhow::Result<(Settings, String)> {
    let Some(path) = path else {
        return Ok((Settings::default(), "the embedded defaults".into()));
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {origin}"))?;
    let settings = Settings::from_yaml(&text, &origin, |key| {
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
        .mode(DATA_DIR_MODE)
        .create(data_dir)
        .with_context(|| format!("data_dir: creating {}", data_dir.display()))
}

/// Phase: serve, then stop and clean up.
async fn serve(
    settings: Settings,
    sockets: StackSockets,
    report: &mut StartupReport,
    pid_path: PathBuf,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    ignore_sigquit()?;
    let pid_file = PidFile::write(&pid_path)?;
    let notifier = Notifier::from_env();

    let socket_paths = sockets.paths();
    let StackSockets {
        control,
        control_path,
        daemons,
    } = sockets;
    let stack = Arc::new(Stack::start(&settings, daemons)?);
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
            tracing::info!(pid = std::process::id(), "{}", stack.summary());
            notifier.notify(Notice::Status(stack.summary()));
            notifier.notify(Notice::Ready);
            report.ready();
        }
        Err(reason) if report.pending() => {
            tracing::error!("start-up failed: {reason}");
            report.failed(&reason);
            shutdown.request(ShutdownKind::Fast);
        }
        Err(reason) => tracing::warn!("start-up incomplete: {reason}; still supervising"),
    }

    // Run until asked to stop.
    let kind = shutdown.wait().await;
    tracing::info!(?kind, "stopping");
    notifier.notify(Notice::Stopping);
    let stopping = stack.stop(kind);
    tokio::pin!(stopping);
    tokio::select! {
        () = &mut stopping => {}
        () = shutdown.wait_fast() => {
            tracing::info!("fast shutdown requested while draining");
            stack.hurry();
            stopping.await;
        }
    }

    // Clean up.
    control_server
        .stop(tokio::time::Instant::now() + CONTROL_STOP_TIMEOUT)
        .await;
    for path in socket_paths {
        let _ = std::fs::remove_file(path);
    }
    drop(pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// SIGQUIT (graceful upgrade) is not carried out by this version: note it instead of
/// dying with a core dump.
fn ignore_sigquit() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut quit = signal(SignalKind::quit()).context("installing the SIGQUIT handler")?;
    tokio::spawn(async move {
        while quit.recv().await.is_some() {
            tracing::warn!("SIGQUIT: graceful upgrade is not supported by this version; ignored");
        }
    });
    Ok(())
}
