//! The start-up every daemon shares: command line, settings, logging, inherited sockets,
//! readiness and shutdown wiring.
//!
//! A daemon is started by the supervisor as `securely-<name>` with its settings in
//! [`SETTINGS_ENV`](crate::settings::SETTINGS_ENV) and its sockets inherited; run by hand
//! (`securely-<name> -c FILE`) it reads the file and binds its own sockets.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bind;
use crate::cli::{DaemonArgs, Parsed};
use crate::control::{ControlService, DaemonInfo};
use crate::listen_fds::{InheritedFds, ListenFdsError, names};
use crate::readiness::{Command, DaemonPhase, Notice, Notifier, NotifyFdError};
use crate::rpc::Access;
use crate::settings::{LoadError, SETTINGS_ENV, Settings, SettingsError};
use crate::shutdown::{Shutdown, ShutdownKind};
use crate::store::StoreError;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The settings could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The settings are invalid.
    #[error("invalid settings: {}", join(.0))]
    Invalid(Vec<SettingsError>),
    /// The inherited sockets are wrong.
    #[error(transparent)]
    Fds(#[from] ListenFdsError),
    /// The inherited notification socket is wrong.
    #[error(transparent)]
    Notify(#[from] NotifyFdError),
    /// A socket could not be bound (standalone) or used.
    #[error("{what}: {reason}")]
    Socket {
        /// Which socket.
        what: String,
        /// The reason.
        reason: std::io::Error,
    },
    /// The sled tree could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(errors: &[SettingsError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A daemon in the making: what every daemon needs before it serves.
#[derive(Debug)]
pub struct Daemon {
    /// `proxyd`, `dnsd` or `queued`.
    pub name: &'static str,
    /// The resolved settings of the whole stack.
    pub settings: Settings,
    /// Sockets handed down by the supervisor (empty when run standalone).
    pub fds: InheritedFds,
    /// Where readiness goes.
    pub notifier: Arc<Notifier>,
    /// Pulled by SIGTERM/SIGINT (once [`Shutdown::watch_signals`] runs), `Drain`, or the
    /// supervisor going away.
    pub shutdown: Shutdown,
    /// Who may make mutating calls.
    pub access: Access,
    /// The supervisor's hand-over commands (see [`crate::readiness`]).
    commands: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Command>>,
}

impl Daemon {
    /// Parses `[-c FILE]`, loads settings, starts logging and takes the inherited fds.
    /// Call first thing in `main`, before any thread starts.
    pub fn start(name: &'static str) -> Result<Self, StartError> {
        Self::start_with_log_filter(name, crate::logging::DEFAULT_FILTER)
    }

    /// [`Daemon::start`] with another default log filter (for libraries that are chatty
    /// at `info`).
    pub fn start_with_log_filter(
        name: &'static str,
        default_filter: &str,
    ) -> Result<Self, StartError> {
        let args = match DaemonArgs::parse_for(name, std::env::args_os()) {
            Ok(Parsed::Run(args)) => args,
            Ok(Parsed::Info(text)) => {
                println!("{}", text.trim_end());
                std::process::exit(0);
            }
            Err(usage) => return Err(StartError::Usage(usage)),
        };
        let settings = match args.conf {
            Some(path) => Settings::load(&path)?,
            None => match std::env::var(SETTINGS_ENV) {
                Ok(text) => Settings::from_yaml(&text, SETTINGS_ENV, |_| {})?,
                Err(_) => Settings::default(),
            },
        }
        .resolve();
        settings.validate().map_err(StartError::Invalid)?;
        crate::logging::init(
            &crate::daemon_binary_name(name),
            settings.error_log.as_deref(),
            default_filter,
        );
        let fds = InheritedFds::from_env()?;
        let notifier = Notifier::from_env(&fds)?;
        Ok(Self::new(name, settings, fds, notifier))
    }

    /// A daemon with these settings, sockets and notification channel (what
    /// [`Daemon::start`] builds from the process's command line and environment). Starts
    /// the thread that reads the supervisor's commands.
    pub fn new(
        name: &'static str,
        settings: Settings,
        fds: InheritedFds,
        notifier: Notifier,
    ) -> Self {
        let notifier = Arc::new(notifier);
        let shutdown = Shutdown::new();
        let on_gone = shutdown.clone();
        let commands = notifier.listen(move || {
            tracing::warn!("supervisor went away; draining");
            on_gone.request(ShutdownKind::Graceful);
        });
        let access = Access::new(settings.user.as_deref(), settings.group.as_deref());
        Self {
            name,
            settings,
            fds,
            notifier,
            shutdown,
            access,
            commands: tokio::sync::Mutex::new(commands),
        }
    }

    /// The gRPC listener: inherited, or bound at the daemon's socket path when standalone.
    pub fn grpc_listener(&mut self) -> Result<UnixListener, StartError> {
        match self.fds.take_unix(names::GRPC)?.into_iter().next() {
            Some(listener) => Ok(listener),
            None => {
                let path = self.socket_path();
                crate::paths::create_runtime_dir(&self.settings.runtime_dir()).map_err(
                    |reason| StartError::Socket {
                        what: format!("creating {}", self.settings.runtime_dir().display()),
                        reason,
                    },
                )?;
                bind::unix(&path).map_err(|reason| StartError::Socket {
                    what: format!("binding {}", path.display()),
                    reason,
                })
            }
        }
    }

    /// The daemon's gRPC socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.settings.daemon_socket(self.name)
    }

    /// The daemon's sled tree directory.
    pub fn tree_path(&self) -> PathBuf {
        self.settings.daemon_tree(self.name)
    }

    /// The `DaemonControl` service for this daemon.
    pub fn control_service(&self, listeners: Vec<String>) -> ControlService {
        let info = DaemonInfo {
            name: self.name,
            listeners,
            tree: self.tree_path().display().to_string(),
        };
        ControlService::new(info, self.shutdown.clone(), self.access.clone())
    }

    /// Waits for this instance's turn to open its sled tree: under the supervisor it
    /// reports `PREPARED=1` and waits for `ACQUIRE` (the previous instance has let go of
    /// the tree by then); standalone it returns at once. `false` when a shutdown was
    /// requested (or the supervisor went away) meanwhile: do not start serving.
    pub async fn await_turn(&self) -> bool {
        if !self.notifier.supervised() {
            return true;
        }
        self.notifier.notify(Notice::Prepared);
        let mut commands = self.commands.lock().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Acquire) => return true,
                    Some(other) => tracing::warn!(?other, "ignored before ACQUIRE"),
                    None => return false,
                },
                _ = self.shutdown.wait() => return false,
            }
        }
    }

    /// The supervisor's next `RELEASE` or `RESUME`; pends forever when there is no
    /// supervisor (or it is gone: its disappearance is a shutdown request instead).
    pub async fn next_command(&self) -> Command {
        let mut commands = self.commands.lock().await;
        loop {
            match commands.recv().await {
                Some(Command::Acquire) => tracing::warn!("ACQUIRE ignored: already serving"),
                Some(command) => return command,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Tells the supervisor that the daemon entered `phase` (systemd is not told).
    pub fn phase(&self, phase: DaemonPhase, detail: impl Into<String>) {
        self.notifier.notify(Notice::Phase {
            phase,
            detail: detail.into(),
        });
    }

    /// Tells the supervisor that the sled tree is closed (after `RELEASE`).
    pub fn released(&self) {
        self.notifier.notify(Notice::Released);
    }

    /// Tells the supervisor (or systemd) that the daemon serves.
    pub fn ready(&self, status: impl Into<String>) {
        self.notifier.notify(Notice::Status(status.into()));
        self.notifier.notify(Notice::Ready);
    }

    /// Tells the supervisor (or systemd) that the daemon drains.
    pub fn stopping(&self) {
        self.notifier.notify(Notice::Stopping);
    }
}
