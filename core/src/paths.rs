//! Where Securely keeps its sockets and data when the settings do not say.
//!
//! As root: `/run/securely` and `/var/lib/securely`. Otherwise the XDG directories of the
//! user (`$XDG_RUNTIME_DIR/securely`, `$XDG_DATA_HOME/securely` or
//! `~/.local/share/securely`), with a per-user temp dir when there is no runtime dir.

use std::path::PathBuf;

/// The system-wide runtime directory used when running as root.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/securely";
/// The system-wide data directory used when running as root.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/securely";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_dir(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The default directory for sockets and the pid file.
pub fn default_runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_RUNTIME_DIR);
    }
    match env_dir("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("securely"),
        None => std::env::temp_dir().join(format!("securely-{}", nix::unistd::geteuid())),
    }
}

/// The default directory for the daemons' sled trees.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_DATA_DIR);
    }
    if let Some(dir) = env_dir("XDG_DATA_HOME") {
        return dir.join("securely");
    }
    match env_dir("HOME") {
        Some(home) => home.join(".local/share/securely"),
        None => std::env::temp_dir().join(format!("securely-data-{}", nix::unistd::geteuid())),
    }
}

/// The control socket's name inside the runtime dir.
pub const CONTROL_SOCKET: &str = "control.sock";

/// A daemon's gRPC socket name inside the runtime dir (`proxyd` -> `proxyd.sock`).
pub fn daemon_socket_name(daemon: &str) -> String {
    format!("{daemon}.sock")
}

/// Mode of the runtime directory: the securely group may reach the sockets.
pub const RUNTIME_DIR_MODE: u32 = 0o750;
/// Mode of a data directory the supervisor creates.
pub const DATA_DIR_MODE: u32 = 0o750;

/// Creates the runtime directory (and its parents) with [`RUNTIME_DIR_MODE`]. An existing
/// one must be a real directory owned by this user (any owner when root): a directory
/// planted by another user in a shared place such as /tmp is refused.
pub fn create_runtime_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(RUNTIME_DIR_MODE)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || (me != 0 && meta.uid() != me) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a directory owned by uid {me}", dir.display()),
        ));
    }
    if meta.uid() == me || me == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(RUNTIME_DIR_MODE))?;
    }
    Ok(())
}
