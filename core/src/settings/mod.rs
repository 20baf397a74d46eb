//! The one YAML settings file of the whole stack.
//!
//! pingora's server keys sit at the top level (so proxyd's `ServerConf` comes from them),
//! next to `runtime_dir`, `data_dir` and one section per daemon. Unknown keys are ignored
//! with a warning, as pingora does, so users can extend the file. [`Settings::resolve`]
//! fills in the defaults that depend on the machine, and [`Settings::validate`] checks
//! everything `securely -t` promises to check.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::names::is_dns_label;
use crate::paths;

mod validate;

/// The environment variable through which the supervisor hands its resolved settings
/// (as YAML) to the daemons it starts.
pub const SETTINGS_ENV: &str = "SECURELY_SETTINGS";

/// A problem with the settings, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct SettingsError {
    /// The dotted key, e.g. `proxy.listen[0]`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SettingsError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        reason: std::io::Error,
    },
    /// The text is not valid YAML or does not fit the settings' types.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or where the text came from.
        origin: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
}

/// The settings of the whole stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// pingora: the settings format version.
    pub version: usize,
    /// pingora: run in the background (same as `-d`).
    pub daemon: bool,
    /// pingora: where the supervisor writes its pid. Default `<runtime_dir>/securely.pid`.
    pub pid_file: Option<PathBuf>,
    /// pingora: a file to append logs to instead of stderr (ignored under journald).
    pub error_log: Option<PathBuf>,
    /// pingora: the socket a new `securely -u` waits on for the listening sockets.
    /// Default `<runtime_dir>/upgrade.sock`.
    pub upgrade_sock: Option<PathBuf>,
    /// pingora: drop to this user after binding the sockets.
    pub user: Option<String>,
    /// pingora: drop to this group after binding the sockets.
    pub group: Option<String>,
    /// pingora: worker threads per service.
    pub threads: usize,
    /// pingora: let idle worker threads steal work.
    pub work_stealing: bool,
    /// pingora: how long a draining process may finish in-flight work.
    pub grace_period_seconds: Option<u64>,
    /// pingora: how long runtimes get to shut down after the grace period.
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// pingora: CA bundle for verifying TLS upstreams.
    pub ca_file: Option<String>,
    /// pingora: local IPv4 addresses to connect to upstreams from.
    pub client_bind_to_ipv4: Vec<String>,
    /// pingora: local IPv6 addresses to connect to upstreams from.
    pub client_bind_to_ipv6: Vec<String>,
    /// pingora: idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: usize,
    /// Sockets and the pid file. Default: see [`paths::default_runtime_dir`].
    pub runtime_dir: Option<PathBuf>,
    /// The daemons' sled trees, one subdirectory each. Default: see
    /// [`paths::default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// proxyd.
    pub proxy: ProxySettings,
    /// dnsd.
    pub dns: DnsSettings,
    /// queued.
    pub queue: QueueSettings,
}

/// proxyd's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// TCP addresses to serve HTTP on.
    pub listen: Vec<String>,
    /// TCP addresses to serve https on (TLS with the local CA's certificates); may be
    /// empty.
    pub tls_listen: Vec<String>,
}

/// dnsd's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsSettings {
    /// Addresses to serve DNS on, over UDP and TCP each.
    pub listen: Vec<String>,
    /// The local top-level domain answered by dnsd.
    pub tld: String,
    /// The addresses every name under the TLD resolves to.
    pub addresses: Vec<String>,
    /// Resolvers for names outside the TLD (`IP` or `IP:PORT`); none: REFUSED.
    pub upstreams: Vec<String>,
    /// TTL of synthesised answers, in seconds.
    pub ttl: u32,
}

/// queued's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueSettings {
    /// How long a reservation lasts when the client does not say, in seconds.
    pub default_timeout_seconds: u64,
    /// Attempts per job when the client does not say.
    pub default_max_tries: u32,
    /// Backoff before the first retry, in seconds; doubled on each further attempt.
    pub retry_backoff_seconds: u64,
    /// Upper bound of the retry backoff, in seconds.
    pub max_retry_backoff_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: 1,
            daemon: false,
            pid_file: None,
            error_log: None,
            upgrade_sock: None,
            user: None,
            group: None,
            threads: 1,
            work_stealing: true,
            grace_period_seconds: Some(30),
            graceful_shutdown_timeout_seconds: Some(5),
            ca_file: None,
            client_bind_to_ipv4: Vec::new(),
            client_bind_to_ipv6: Vec::new(),
            upstream_keepalive_pool_size: 128,
            runtime_dir: None,
            data_dir: None,
            proxy: ProxySettings::default(),
            dns: DnsSettings::default(),
            queue: QueueSettings::default(),
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".into()],
            tls_listen: vec!["127.0.0.1:8443".into()],
        }
    }
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:5353".into()],
            tld: "test".into(),
            addresses: vec!["127.0.0.1".into(), "::1".into()],
            upstreams: Vec::new(),
            ttl: 60,
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            default_timeout_seconds: 60,
            default_max_tries: 3,
            retry_backoff_seconds: 1,
            max_retry_backoff_seconds: 300,
        }
    }
}

/// Upper bound for the grace periods, so a typo cannot make a stop hang for days.
const MAX_GRACE_SECONDS: u64 = 3600;
/// Upper bound for worker threads.
const MAX_THREADS: usize = 1024;
/// Room for a Unix socket path in `sockaddr_un`, with its NUL.
const SUN_PATH_MAX: usize = 108;
/// Most attempts a job may be given (queue.default_max_tries and per push).
pub const QUEUE_MAX_TRIES: u32 = 1000;
/// Longest reservation, in seconds: one day.
pub const QUEUE_MAX_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// Longest delay of a job (push delay, retry backoff), in seconds: one year.
pub const QUEUE_MAX_DELAY_SECONDS: u64 = 365 * 24 * 3600;

impl Settings {
    /// Parses settings from YAML text. Unknown keys are reported to `on_unknown` (with their
    /// dotted path) and otherwise ignored.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        mut on_unknown: impl FnMut(&str),
    ) -> Result<Self, LoadError> {
        let parse_error = |e: serde_norway::Error| LoadError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let value: serde_norway::Value = serde_norway::from_str(text).map_err(parse_error)?;
        if value.is_null() {
            return Ok(Self::default());
        }
        // Parse the text itself (not the value) so errors keep the key's path and line.
        let settings =
            serde_ignored::deserialize(serde_norway::Deserializer::from_str(text), |path| {
                on_unknown(&path.to_string())
            })
            .map_err(parse_error)?;
        Ok(settings)
    }

    /// Reads and parses a settings file, warning about unknown keys through `tracing`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_with(path, |key| {
            tracing::warn!(key, file = %path.display(), "unknown settings key ignored");
        })
    }

    /// Reads and parses a settings file, reporting unknown keys to `on_unknown`.
    pub fn load_with(path: &Path, on_unknown: impl FnMut(&str)) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|reason| LoadError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::from_yaml(&text, &path.display().to_string(), on_unknown)
    }

    /// Fills in every default that depends on the machine, so that the result means the
    /// same in any process that reads it.
    pub fn resolve(mut self) -> Self {
        let runtime_dir = self
            .runtime_dir
            .take()
            .unwrap_or_else(paths::default_runtime_dir);
        self.data_dir.get_or_insert_with(paths::default_data_dir);
        self.pid_file
            .get_or_insert_with(|| runtime_dir.join("securely.pid"));
        self.upgrade_sock
            .get_or_insert_with(|| runtime_dir.join("upgrade.sock"));
        self.runtime_dir = Some(runtime_dir);
        self.dns.tld = crate::names::normalize_tld(&self.dns.tld);
        self
    }

    /// The runtime directory (after [`Settings::resolve`]).
    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(paths::default_runtime_dir)
    }

    /// The data directory (after [`Settings::resolve`]).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(paths::default_data_dir)
    }

    /// Where a supervisor started with `-u` waits for the running one's sockets.
    pub fn upgrade_socket(&self) -> PathBuf {
        self.upgrade_sock
            .clone()
            .unwrap_or_else(|| self.runtime_dir().join("upgrade.sock"))
    }

    /// The supervisor's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir().join(paths::CONTROL_SOCKET)
    }

    /// A daemon's gRPC socket.
    pub fn daemon_socket(&self, daemon: &str) -> PathBuf {
        self.runtime_dir().join(paths::daemon_socket_name(daemon))
    }

    /// A daemon's sled tree.
    pub fn daemon_tree(&self, daemon: &str) -> PathBuf {
        self.data_dir().join(daemon)
    }

    /// The grace period for draining.
    pub fn grace_period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_period_seconds.unwrap_or(30))
    }

    /// The proxy's listen addresses (after [`Settings::validate`] they all parse).
    pub fn proxy_listen(&self) -> Vec<SocketAddr> {
        self.proxy
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The proxy's https addresses (after [`Settings::validate`] they all parse).
    pub fn proxy_tls_listen(&self) -> Vec<SocketAddr> {
        self.proxy
            .tls_listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// dnsd's listen addresses (after [`Settings::validate`] they all parse).
    pub fn dns_listen(&self) -> Vec<SocketAddr> {
        self.dns
            .listen
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The serialised form handed to daemons in [`SETTINGS_ENV`].
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("settings always serialise")
    }
}

/// Parses `IP:PORT` (IPv6 as `[::1]:53`), explaining what is wrong otherwise.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("{text:?} is not an address of the form IP:PORT (IPv6 as [::1]:PORT)")
    })?;
    if addr.port() == 0 {
        return Err(format!("{text:?} needs a port other than 0"));
    }
    Ok(addr)
}

/// Parses a DNS upstream: `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

#[cfg(test)]
mod tests;
