//! Finding the stack's sockets: `--socket`, `-c FILE`, `SECURELY_SOCKET` (through
//! `--socket`'s env), or the default runtime dir.

use std::path::{Path, PathBuf};

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

    /// Connects to the supervisor.
    pub async fn supervisor(&self) -> anyhow::Result<Channel> {
        connect(&self.control, "the supervisor").await
    }

    /// Connects to a daemon.
    pub async fn daemon(&self, daemon: &str) -> anyhow::Result<Channel> {
        connect(&self.daemon_socket(daemon), daemon).await
    }
}

async fn connect(path: &Path, who: &str) -> anyhow::Result<Channel> {
    if !path.exists() {
        anyhow::bail!(
            "cannot reach {who}: {} does not exist (is securely running? try -c FILE or --socket PATH)",
            path.display()
        );
    }
    securely_core::rpc::connect(path)
        .await
        .with_context(|| format!("cannot reach {who} at {}", path.display()))
}
