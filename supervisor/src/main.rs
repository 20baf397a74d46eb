//! `securely`: the supervisor. It binds every listening socket once, starts proxyd, dnsd
//! and queued with their sockets, hands them over to new instances on request, restarts
//! them when they die, and owns the stack's lifecycle: SIGTERM stops gracefully, SIGINT
//! fast, SIGQUIT (or SIGHUP, or `securelyctl reload`) upgrades the stack in place.
//!
//! Start-up runs in named phases, in this order: **load** the settings, **check** them
//! (`-t` stops here), **prepare** the directories, **bind** the sockets, **drop
//! privileges**, **daemonize** (`-d`), then **serve**: start the daemons, report ready,
//! run until asked to stop or upgrade, **stop** every daemon, and **clean up** sockets and
//! pid file. After an upgrade's exec ([`upgrade`]) the new image **resumes** instead: it
//! adopts the sockets and daemons it was handed, then serves.

mod backoff;
mod child;
mod cli;
mod control;
mod daemonize;
mod handover;
mod pidfile;
mod privileges;
mod slot;
mod sockets;
mod stack;
mod state;
mod takeover;
mod upgrade;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
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
use crate::slot::ExportedSlot;
use crate::sockets::StackSockets;
use crate::stack::Stack;
use crate::upgrade::{CarriedState, Upgrades};

/// How long start-up may take before `-d` gives up and reports failure.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long status calls in flight get when the supervisor exits or re-executes.
const CONTROL_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// After blocking the stop signals for an exec, how long a signal already caught gets to
/// reach the shutdown switch (after as many yields to the runtime's tasks).
const SIGNAL_SETTLE: Duration = Duration::from_millis(20);
const SIGNAL_SETTLE_YIELDS: usize = 8;

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

fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    // `-d` changes directory to /: an upgrade reads the file again by this path.
    if let Some(conf) = &args.conf {
        args.conf = Some(std::path::absolute(conf).context("locating the settings file")?);
    }
    // The path this binary was started from: an upgrade re-executes whatever is installed
    // there by then.
    let exe = std::env::current_exe().context("locating the securely executable")?;
    if let Some(carried) = CarriedState::take_from_env() {
        return resume(args, exe, carried?).map(|()| ExitCode::SUCCESS);
    }

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

    // Phase: prepare.
    let runtime_dir = settings.runtime_dir();
    let data_dir = settings.data_dir();
    prepare_dirs(&runtime_dir, &data_dir)?;

    // Phase: bind, or with `-u` take the sockets over from the running supervisor.
    let sockets = if args.upgrade {
        take_over(&settings)?
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

/// `-u`: waits for the running supervisor's sockets (it sends them on SIGQUIT), binding
/// only those the settings add. A stop signal meanwhile ends the wait (nothing is held).
fn take_over(settings: &Settings) -> anyhow::Result<StackSockets> {
    stop_signals()
        .thread_unblock()
        .context("unblocking signals")?;
    let received = takeover::receive(&settings.upgrade_socket());
    block_stop_signals();
    let (carried, sender) = received?;
    // Acknowledged only once the sockets are ours: until then the running supervisor
    // serves on, whatever fails here.
    let sockets = StackSockets::adopt(settings, &carried);
    carried.close();
    let sockets = sockets?;
    takeover::acknowledge(sender)?;
    Ok(sockets)
}

/// Phases after daemonizing: pid file, drop privileges, logging, serve.
fn supervise(
    settings: Settings,
    sockets: StackSockets,
    report: &mut StartupReport,
    exe: PathBuf,
    conf: Option<PathBuf>,
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
    let serving = Serving {
        settings,
        sockets,
        pid_file,
        exe,
        conf,
        upgrades: Arc::new(Upgrades::default()),
        adopted: HashMap::new(),
        continuing: None,
        started: Instant::now(),
    };
    runtime()?.block_on(serve(serving, report))
}

/// The supervisor's runtime. Its threads (workers and blocking pool alike) keep the stop
/// signals blocked, so that only the main thread takes them: then blocking them there
/// before an upgrade's exec leaves any later one pending for the next image.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("securely")
        .on_thread_start(block_stop_signals)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Phase: resume, in the image an upgrade executed. The sockets and daemons come from
/// `carried`; the settings file is read again (falling back to the previous settings if
/// it cannot be used, which fails the upgrade). No daemonizing, no new pid file, no
/// privilege change: the process is the same.
fn resume(args: Args, exe: PathBuf, carried: CarriedState) -> anyhow::Result<()> {
    let fresh = load_settings(args.conf.as_deref()).and_then(|(settings, origin)| {
        let settings = settings.resolve();
        settings.validate().map_err(|errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{origin}: {}", errors.join("; "))
        })?;
        Ok(settings)
    });
    let (settings, sockets, problem) = match fresh
        .and_then(|settings| Ok((StackSockets::adopt(&settings, &carried.sockets)?, settings)))
    {
        Ok((sockets, settings)) => (settings, sockets, None),
        Err(e) => {
            let previous =
                Settings::from_yaml(&carried.previous_settings, "the previous settings", |_| {})
                    .context("reading the previous settings")?
                    .resolve();
            let sockets = StackSockets::adopt(&previous, &carried.sockets)
                .context("taking back the previous sockets")?;
            (
                previous,
                sockets,
                Some(format!("the new settings cannot be used: {e:#}")),
            )
        }
    };
    carried.sockets.close();
    securely_core::logging::init(
        "securely",
        settings.error_log.as_deref(),
        securely_core::logging::DEFAULT_FILTER,
    );
    tracing::info!(
        pid = std::process::id(),
        "re-executed; adopting the daemons"
    );
    let serving = Serving {
        settings,
        sockets,
        pid_file: PidFile::adopt(carried.pid_file),
        exe,
        conf: args.conf,
        upgrades: Arc::new(Upgrades::carried(carried.upgrade)),
        adopted: carried.slots,
        continuing: Some(problem),
        started: Instant::now() - Duration::from_millis(carried.uptime_ms),
    };
    runtime()?.block_on(serve(serving, &mut StartupReport::default()))
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

/// Everything the serve phase runs with.
struct Serving {
    settings: Settings,
    /// The originals; the slots and the control server get copies.
    sockets: StackSockets,
    pid_file: PidFile,
    /// The supervisor binary to re-execute on an upgrade.
    exe: PathBuf,
    /// The settings file (`-c`), read again on an upgrade.
    conf: Option<PathBuf>,
    upgrades: Arc<Upgrades>,
    /// Instances handed across an exec, to adopt.
    adopted: HashMap<String, ExportedSlot>,
    /// After an upgrade's exec: hand every daemon over to its new binary (`None`), or
    /// report why the new settings could not be used (`Some`).
    continuing: Option<Option<String>>,
    /// When the supervisor started (its first image).
    started: Instant,
}

/// A request to upgrade, answered with its id once the check passed.
pub struct UpgradeTrigger {
    /// Where the answer goes (none for a signal).
    pub reply: Option<tokio::sync::oneshot::Sender<Result<u64, String>>>,
}

/// How an upgrade attempt ended, for the serve loop.
enum Upgraded {
    /// Nothing changed (check failed, busy, or a stop came first).
    Unchanged,
    /// The exec failed after the daemons were let go: adopt them again.
    ExecFailed(HashMap<String, ExportedSlot>),
    /// The sockets went to a `-u` supervisor: this one drains and exits.
    HandedAway,
}

/// Phase: serve, then stop and clean up.
async fn serve(mut serving: Serving, report: &mut StartupReport) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .watch_signals()
        .context("installing signal handlers")?;
    let (trigger, mut triggers) = tokio::sync::mpsc::channel::<UpgradeTrigger>(4);
    watch_upgrade_signals(trigger.clone())?;
    // The handlers are in place: let the signals held since start-up (or across the
    // exec) arrive (on this thread; the runtime's workers keep them blocked).
    stop_signals()
        .thread_unblock()
        .context("unblocking signals")?;
    let notifier = Arc::new(Notifier::from_env());
    let access = Access::new(
        serving.settings.user.as_deref(),
        serving.settings.group.as_deref(),
    );

    loop {
        let stack = Arc::new(Stack::start(
            &serving.settings,
            serving
                .sockets
                .daemon_copies()
                .context("copying the sockets")?,
            &shutdown,
            &serving.exe,
            std::mem::take(&mut serving.adopted),
            serving.started,
        ));
        let mut control_server = Some(start_control(
            &serving, &stack, &shutdown, &access, &trigger,
        )?);

        match serving.continuing.take() {
            Some(problem) => {
                tokio::spawn(continue_upgrade(
                    stack.clone(),
                    serving.upgrades.clone(),
                    notifier.clone(),
                    problem,
                ));
            }
            None => await_startup(&stack, &shutdown, &notifier, report).await,
        }

        // Run until asked to stop or to upgrade.
        let kind = loop {
            tokio::select! {
                biased;
                kind = shutdown.wait() => break Some(kind),
                Some(request) = triggers.recv() => {
                    match upgrade_stack(&mut serving, &stack, &shutdown, &notifier, &mut control_server, request).await {
                        Upgraded::Unchanged => {
                            if control_server.is_none() {
                                control_server = Some(start_control(&serving, &stack, &shutdown, &access, &trigger)?);
                            }
                        }
                        Upgraded::ExecFailed(slots) => {
                            serving.adopted = slots;
                            break None;
                        }
                        Upgraded::HandedAway => {}
                    }
                }
            }
        };
        let Some(kind) = kind else {
            // Adopt our own daemons again and serve on.
            if let Some(server) = control_server.take() {
                server.abort();
            }
            continue;
        };

        // Phase: stop. The slots stop their daemons themselves.
        tracing::info!(?kind, "stopping");
        notifier.notify(Notice::Stopping);
        stack.wait_stopped().await;

        // Clean up.
        if let Some(server) = control_server {
            server
                .stop(tokio::time::Instant::now() + CONTROL_STOP_TIMEOUT)
                .await;
        }
        drop(serving);
        tracing::info!("stopped");
        return Ok(());
    }
}

/// Serves the control service on a copy of the control socket.
fn start_control(
    serving: &Serving,
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    access: &Access,
    trigger: &tokio::sync::mpsc::Sender<UpgradeTrigger>,
) -> anyhow::Result<RpcServer> {
    let service = ControlService::new(
        stack.clone(),
        shutdown.clone(),
        access.clone(),
        serving.settings.control_socket().display().to_string(),
        serving.upgrades.clone(),
        trigger.clone(),
    );
    let listener = serving
        .sockets
        .control
        .try_clone()
        .context("copying the control socket")?;
    Ok(RpcServer::start(
        listener,
        Routes::new(service.into_server()),
    ))
}

/// Waits for every daemon's first start, reporting the outcome to `-d`'s parent and to
/// systemd.
async fn await_startup(
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    notifier: &Arc<Notifier>,
    report: &mut StartupReport,
) {
    let startup = tokio::select! {
        result = stack.wait_all_ready(STARTUP_TIMEOUT) => result,
        kind = shutdown.wait() => Err(format!("{kind:?} shutdown requested during start-up")),
    };
    match startup {
        Ok(()) => {
            announce_ready(stack, notifier);
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
                        result = stack.wait_all_ready(STARTUP_TIMEOUT) => {
                            if result.is_ok() {
                                announce_ready(&stack, &notifier);
                                break;
                            }
                            // Exported to a new image (or stopped): nothing to announce.
                            if stack.ended() {
                                break;
                            }
                        }
                        _ = shutdown.wait() => break,
                    }
                }
            });
        }
    }
}

/// Phases 1-3 of an upgrade (see [`upgrade`]): check, carry, exec. Returns only if the
/// process goes on in this image.
async fn upgrade_stack(
    serving: &mut Serving,
    stack: &Arc<Stack>,
    shutdown: &Shutdown,
    notifier: &Notifier,
    control_server: &mut Option<RpcServer>,
    request: UpgradeTrigger,
) -> Upgraded {
    let answer = |reply: Option<tokio::sync::oneshot::Sender<Result<u64, String>>>, result| {
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    };
    if let Some(kind) = shutdown.requested() {
        answer(
            request.reply,
            Err(format!("the stack is stopping ({kind:?})")),
        );
        return Upgraded::Unchanged;
    }
    let _guard = match stack.begin("an upgrade") {
        Ok(guard) => guard,
        Err(busy) => {
            tracing::warn!("upgrade refused: {busy}");
            answer(request.reply, Err(busy));
            return Upgraded::Unchanged;
        }
    };
    let id = serving.upgrades.begin();
    // pingora's path: a `securely -u` waiting on upgrade_sock takes the sockets (signal
    // only: `securelyctl reload` always upgrades in place).
    if request.reply.is_none() {
        match hand_to_waiting_supervisor(serving, stack, shutdown).await {
            Ok(false) => {}
            Ok(true) => {
                // New control calls go to the new supervisor only.
                if let Some(server) = control_server.take() {
                    server.abort();
                }
                return Upgraded::HandedAway;
            }
            Err(reason) => {
                tracing::error!(id, "upgrade failed, serving on: {reason}");
                serving.upgrades.finish(Err(reason));
                return Upgraded::Unchanged;
            }
        }
    }
    tracing::info!(
        id,
        "upgrade: checking the installed binaries and the settings"
    );
    notifier.notify(Notice::Reloading);

    // Phase 1: check.
    let daemons: Vec<PathBuf> = securely_core::DAEMONS
        .iter()
        .map(|d| child::binary_path(&serving.exe, d))
        .collect();
    let checked = tokio::select! {
        checked = upgrade::check(&serving.exe, serving.conf.as_deref(), &daemons) => checked,
        kind = shutdown.wait() => Err(format!("a {kind:?} stop came first")),
    };
    if let Err(reason) = checked {
        tracing::error!(id, "upgrade refused, nothing changed: {reason}");
        serving.upgrades.finish(Err(reason.clone()));
        answer(request.reply, Err(reason));
        notifier.notify(Notice::Ready);
        return Upgraded::Unchanged;
    }
    answer(request.reply, Ok(id));

    // Phase 2: carry. The control server first: the Reload call gets its answer out.
    serving.upgrades.progress("re-executing the supervisor");
    if let Some(server) = control_server.take() {
        server
            .stop(tokio::time::Instant::now() + CONTROL_STOP_TIMEOUT)
            .await;
    }
    // Only this thread takes stop signals (see `runtime`): from here on one stays
    // pending across the exec. One taken just before reaches the switch meanwhile.
    block_stop_signals();
    for _ in 0..SIGNAL_SETTLE_YIELDS {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(SIGNAL_SETTLE).await;
    if let Some(kind) = shutdown.requested() {
        let _ = stop_signals().thread_unblock();
        serving
            .upgrades
            .finish(Err(format!("a {kind:?} stop came first")));
        return Upgraded::Unchanged;
    }
    let slots = stack.export().await;
    // A stop requested while the slots let go (or a slot that could not): no exec; the
    // daemons are taken back and the stop carried out.
    if shutdown.requested().is_some() || slots.len() != stack.slots().len() {
        return exec_failed(
            serving,
            slots,
            "a stop came while the daemons were handed over".into(),
        );
    }
    let sockets = match serving.sockets.carry() {
        Ok(sockets) => sockets,
        Err(e) => return exec_failed(serving, slots, format!("keeping the sockets open: {e}")),
    };
    let state = CarriedState {
        sockets,
        slots: slots.clone(),
        upgrade: serving.upgrades.snapshot(),
        previous_settings: serving.settings.to_yaml(),
        pid_file: serving.pid_file.path().to_path_buf(),
        uptime_ms: serving.started.elapsed().as_millis() as u64,
    };
    tracing::info!(id, exe = %serving.exe.display(), "upgrade: re-executing");

    // Phase 3: exec.
    let error = upgrade::exec(&serving.exe, &state);
    exec_failed(serving, slots, format!("{error:#}"))
}

/// Sends every socket to a supervisor started with `-u`, if one waits on upgrade_sock;
/// then has each daemon close its tree and stops this stack gracefully, leaving the
/// socket files and the pid file to the new supervisor. `Ok(false)`: none waits.
async fn hand_to_waiting_supervisor(
    serving: &mut Serving,
    stack: &Stack,
    shutdown: &Shutdown,
) -> Result<bool, String> {
    let path = serving.settings.upgrade_socket();
    if !path.exists() {
        return Ok(false);
    }
    let carried = serving.sockets.describe();
    let offered = tokio::task::spawn_blocking(move || takeover::offer(&path, &carried))
        .await
        .map_err(|e| format!("sending the sockets: {e}"))?
        .map_err(|e| format!("{e:#}"))?;
    if !offered {
        return Ok(false);
    }
    tracing::info!(
        "upgrade: the sockets are with the new supervisor; releasing the trees and draining"
    );
    serving.pid_file.disown();
    serving.sockets.files.disown();
    for slot in stack.slots() {
        slot.release().await;
    }
    serving.upgrades.finish(Ok(
        "handed over to the supervisor waiting on upgrade_sock".into()
    ));
    shutdown.request(ShutdownKind::Graceful);
    Ok(true)
}

fn exec_failed(
    serving: &Serving,
    slots: HashMap<String, ExportedSlot>,
    reason: String,
) -> Upgraded {
    tracing::error!("upgrade failed: {reason}; serving on with the running daemons");
    serving.sockets.keep_private();
    serving.upgrades.finish(Err(reason));
    let _ = stop_signals().thread_unblock();
    Upgraded::ExecFailed(slots)
}

/// Phase 4 of an upgrade, in the new image: hands every daemon over to its new binary,
/// one at a time, and records the result.
async fn continue_upgrade(
    stack: Arc<Stack>,
    upgrades: Arc<Upgrades>,
    notifier: Arc<Notifier>,
    problem: Option<String>,
) {
    let _guard = stack.begin("an upgrade");
    if let Some(problem) = problem {
        tracing::error!("upgrade failed: {problem}");
        upgrades.finish(Err(problem));
        announce_ready(&stack, &notifier);
        return;
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for slot in stack.slots() {
        upgrades.progress(format!("handing {} over to its new binary", slot.name));
        match slot.replace(None, None).await {
            Ok(replaced) => done.push(format!(
                "{} {} -> {}",
                slot.name, replaced.old_pid, replaced.pid
            )),
            Err(reason) => failed.push(format!("{}: {reason}", slot.name)),
        }
    }
    let result = if failed.is_empty() {
        tracing::info!("upgrade done: {}", done.join(", "));
        Ok(format!("upgraded: {}", done.join(", ")))
    } else {
        tracing::error!("upgrade failed: {}", failed.join("; "));
        Err(failed.join("; "))
    };
    upgrades.finish(result);
    announce_ready(&stack, &notifier);
}

/// Logs that the stack serves and tells systemd.
fn announce_ready(stack: &Stack, notifier: &Notifier) {
    tracing::info!(pid = std::process::id(), "{}", stack.summary());
    notifier.notify(Notice::Status(stack.summary()));
    notifier.notify(Notice::Ready);
}

/// SIGQUIT (pingora's graceful upgrade) and SIGHUP (nginx's reload) both upgrade the
/// stack in place: the binaries and the settings file are read again.
fn watch_upgrade_signals(trigger: tokio::sync::mpsc::Sender<UpgradeTrigger>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, name) in [
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        let mut signals = signal(kind).with_context(|| format!("installing the {name} handler"))?;
        let trigger = trigger.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::info!("{name}: upgrading the stack");
                if trigger.try_send(UpgradeTrigger { reply: None }).is_err() {
                    tracing::warn!("{name}: an upgrade is already pending; ignored");
                }
            }
        });
    }
    Ok(())
}
