//! The pid file: written once the supervisor runs in its final process, removed at exit.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A pid file that is removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Removed at drop unless another process took it over.
    owned: bool,
}

impl PidFile {
    /// Writes this process's pid to `path` (atomically, via a temporary file).
    pub fn write(path: &Path) -> anyhow::Result<Self> {
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("pid_file: writing {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            owned: true,
        })
    }
}

impl PidFile {
    /// Takes charge of the pid file an earlier image of this process wrote.
    pub fn adopt(path: PathBuf) -> Self {
        Self { path, owned: true }
    }

    /// Leaves the file to another process (which rewrote it): not removed at drop.
    pub fn disown(&mut self) {
        self.owned = false;
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
