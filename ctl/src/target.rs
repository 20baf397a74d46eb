//! Finding the stack's sockets: `--socket`, `-c FILE`, `SECURELY_SOCKET` (through
//! `--socket`'s env), or the default runtime dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use securely_core::settings::Settings;
use tonic::transport::Channel;

/// The sockets of one running stack.
#[derive(Debug)]
pub struct Target {
    control: PathBuf,
}

impl Target {
    /// Resolves the control socket from the command line, the environment or defaults.
    pub fn find(conf: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(socket) = socket {
            return Ok(Self {
                control: socket.to_path_buf(),
            });
        }
        let settings = match conf {
            Some(path) => Settings::load_with(path, |_| {})?,
            None => Settings::default(),
        };
        Ok(Self {
            control: settings.resolve().control_socket(),
        })
    }

    /// A daemon's socket: beside the control socket.
    fn daemon_socket(&self, daemon: &str) -> PathBuf {
        let dir = self.control.parent().unwrap_or(Path::new("."));
        dir.join(securely_core::paths::daemon_socket_name(daemon))
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.control
    }

    /// Connects to the supervisor; calls time out after [`CALL_TIMEOUT`].
    pub async fn supervisor(&self) -> anyhow::Result<Channel> {
        connect(&self.control, "the supervisor", Some(CALL_TIMEOUT)).await
    }

    /// Connects to the supervisor for a call that may take as long as it takes (a
    /// restart waits for the new instance, bounded by the supervisor itself; a watch
    /// follows the stack until it ends).
    pub async fn supervisor_unbounded(&self) -> anyhow::Result<Channel> {
        connect(&self.control, "the supervisor", None).await
    }

    /// Connects to a daemon; calls time out after `extra` plus [`CALL_TIMEOUT`].
    pub async fn daemon(&self, daemon: &str, extra: Duration) -> anyhow::Result<Channel> {
        connect(
            &self.daemon_socket(daemon),
            daemon,
            Some(CALL_TIMEOUT + extra),
        )
        .await
    }
}

/// How long a call may take before securelyctl gives up (a daemon restarting is
/// waited for: its socket stays open meanwhile).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

async fn connect(path: &Path, who: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    if !path.exists() {
        anyhow::bail!(
            "cannot reach {who}: {} does not exist (is securely running? try -c FILE or --socket PATH)",
            path.display()
        );
    }
    securely_core::rpc::connect_with(path, timeout)
        .await
        .with_context(|| format!("cannot reach {who} at {}", path.display()))
}
