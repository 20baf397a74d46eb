//! The system store: the CA bundle that curl, OpenSSL, Go, Python, Node (with
//! `--use-openssl-ca`) and most tools read. One anchor file in the directory the system's
//! own tool reads, then that tool: Debian/Ubuntu's `update-ca-certificates`, Fedora's and
//! Arch's `update-ca-trust`. Only root may change it.
//!
//! For tests (never this machine's store): `SECURELY_CA_SYSTEM_ANCHOR` names the anchor
//! file instead (empty: no system store) and `SECURELY_CA_SYSTEM_UPDATE` the command run
//! after each change (split on whitespace; unset: none).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::run;
use super::{Ca, Line, NEEDS_ROOT, Outcome};

/// The anchor file's name, without its extension.
const ANCHOR_STEM: &str = "securely-local-ca";
/// Overrides the anchor file (tests).
const ENV_ANCHOR: &str = "SECURELY_CA_SYSTEM_ANCHOR";
/// Overrides the command run after a change (tests).
const ENV_UPDATE: &str = "SECURELY_CA_SYSTEM_UPDATE";

/// A system's store as its own tool keeps it.
struct Family {
    /// The tool that rebuilds the bundle, looked for on PATH.
    tool: &'static str,
    /// The directory of anchors it reads.
    dir: &'static str,
    /// The anchor's extension there.
    extension: &'static str,
    /// The tool's arguments after adding, and after removing.
    after_add: &'static [&'static str],
    after_remove: &'static [&'static str],
}

/// In the order tried: the first whose tool and directory are both here.
const FAMILIES: [Family; 3] = [
    // Debian, Ubuntu: `--fresh` drops the links to a removed anchor.
    Family {
        tool: "update-ca-certificates",
        dir: "/usr/local/share/ca-certificates",
        extension: "crt",
        after_add: &[],
        after_remove: &["--fresh"],
    },
    // Fedora, RHEL.
    Family {
        tool: "update-ca-trust",
        dir: "/etc/pki/ca-trust/source/anchors",
        extension: "pem",
        after_add: &["extract"],
        after_remove: &["extract"],
    },
    // Arch.
    Family {
        tool: "update-ca-trust",
        dir: "/etc/ca-certificates/trust-source/anchors",
        extension: "crt",
        after_add: &[],
        after_remove: &[],
    },
];

/// The system store: the anchor file `ca:trust` writes and the commands that rebuild the
/// bundle from it.
#[derive(Debug, Clone)]
pub struct SystemStore {
    anchor: PathBuf,
    after_add: Vec<String>,
    after_remove: Vec<String>,
}

impl SystemStore {
    /// A store whose anchor is `anchor`, rebuilt by `after_add` / `after_remove` (program
    /// then arguments; empty: nothing to run).
    pub fn new(anchor: PathBuf, after_add: Vec<String>, after_remove: Vec<String>) -> Self {
        Self {
            anchor,
            after_add,
            after_remove,
        }
    }

    /// This system's store (or the tests' override), if `ca:trust` knows its kind.
    pub fn discover() -> Option<Self> {
        if let Some(anchor) = std::env::var_os(ENV_ANCHOR) {
            if anchor.is_empty() {
                return None;
            }
            let update: Vec<String> = std::env::var(ENV_UPDATE)
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
            return Some(Self::new(anchor.into(), update.clone(), update));
        }
        FAMILIES.iter().find_map(|family| {
            let tool = run::find_program(family.tool)?;
            if !Path::new(family.dir).is_dir() {
                return None;
            }
            let command = |args: &[&str]| {
                std::iter::once(tool.display().to_string())
                    .chain(args.iter().map(|a| a.to_string()))
                    .collect()
            };
            Some(Self::new(
                Path::new(family.dir).join(format!("{ANCHOR_STEM}.{}", family.extension)),
                command(family.after_add),
                command(family.after_remove),
            ))
        })
    }

    /// Writes the anchor (unless it holds `ca` already) and rebuilds the bundle; on a
    /// failed rebuild the previous anchor is put back.
    pub fn trust(&self, ca: &Ca) -> Line {
        let previous = std::fs::read_to_string(&self.anchor).ok();
        let outcome = if previous.as_deref().map(str::trim) == Some(ca.pem().trim()) {
            Outcome::AlreadyTrusted
        } else {
            match write(&self.anchor, ca.pem()) {
                Err(e) => Outcome::Failed(io_reason(&self.anchor, &e)),
                Ok(()) => match rebuild(&self.after_add) {
                    Ok(()) => Outcome::Trusted,
                    Err(why) => {
                        let _ = restore(&self.anchor, previous.as_deref());
                        Outcome::Failed(why)
                    }
                },
            }
        };
        self.line(outcome)
    }

    /// Removes the anchor and rebuilds the bundle; on a failed rebuild the anchor is put
    /// back.
    pub fn untrust(&self) -> Line {
        let outcome = match std::fs::read_to_string(&self.anchor) {
            Err(e) if e.kind() == ErrorKind::NotFound => Outcome::NotTrusted,
            Err(e) => Outcome::Failed(io_reason(&self.anchor, &e)),
            Ok(previous) => match std::fs::remove_file(&self.anchor) {
                Err(e) => Outcome::Failed(io_reason(&self.anchor, &e)),
                Ok(()) => match rebuild(&self.after_remove) {
                    Ok(()) => Outcome::Removed,
                    Err(why) => {
                        let _ = restore(&self.anchor, Some(&previous));
                        Outcome::Failed(why)
                    }
                },
            },
        };
        self.line(outcome)
    }

    fn line(&self, outcome: Outcome) -> Line {
        Line {
            store: "system",
            location: self.anchor.display().to_string(),
            outcome,
        }
    }
}

/// Writes `text` to `path` whole (a temporary file beside it, then a rename), mode 0644.
fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    let staging = PathBuf::from(name);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&staging)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staging, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written
}

/// Puts the anchor back as it was (`None`: absent).
fn restore(path: &Path, previous: Option<&str>) -> std::io::Result<()> {
    match previous {
        Some(text) => write(path, text),
        None => std::fs::remove_file(path),
    }
}

/// Runs the rebuild command, if there is one.
fn rebuild(command: &[String]) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(());
    };
    run::tool(Path::new(program), args, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A failed file operation as a line's reason: permission means root is needed.
fn io_reason(path: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => NEEDS_ROOT.to_string(),
        _ => format!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests;
