//! Whose NSS databases: the user running `securelyctl`, or under `sudo` the user who ran
//! sudo (their home from the password database, their tools run as them, so nothing in
//! their home ends up owned by root).

use std::path::{Path, PathBuf};

/// The owner of the per-user stores.
#[derive(Debug, Clone)]
pub struct User {
    /// Their home directory (None when HOME is not set).
    pub home: Option<PathBuf>,
    /// (uid, gid) to run their tools as, when `securelyctl` runs as root for them.
    pub ids: Option<(u32, u32)>,
}

impl User {
    /// The user whose HOME is `home`, tools run as whoever runs `securelyctl` (tests).
    #[cfg(test)]
    pub fn with_home(home: impl Into<PathBuf>) -> Self {
        Self {
            home: Some(home.into()),
            ids: None,
        }
    }

    /// The user running `securelyctl` (HOME from the environment), or under sudo the user
    /// who ran it.
    pub fn current() -> Self {
        if nix::unistd::geteuid().is_root()
            && let Some(user) = Self::sudo_user()
        {
            return user;
        }
        Self {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            ids: None,
        }
    }

    /// SUDO_UID's user, unless it is root itself.
    fn sudo_user() -> Option<Self> {
        let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        let entry = nix::unistd::User::from_uid(uid.into()).ok()??;
        let gid = std::env::var("SUDO_GID")
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(entry.gid.as_raw());
        Some(Self {
            home: Some(entry.dir),
            ids: Some((uid, gid)),
        })
    }

    /// Creates `dir` and its missing parents, mode 0700, owned by this user.
    pub fn create_private_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some((uid, gid)) = self.ids {
            missing.reverse();
            for created in missing {
                std::os::unix::fs::chown(created, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }
}
