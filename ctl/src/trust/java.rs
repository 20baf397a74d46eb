//! Java's cacerts, which the JDK's TLS reads instead of the system store (on Debian it is
//! rebuilt from the system store too, by a hook of update-ca-certificates; `ca:trust`
//! adds its own entry so a JDK that is not Debian's trusts the CA as well). Changed with
//! the JDK's `keytool`; JAVA_HOME picks the JDK, else the `keytool` on PATH.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::run::{self, ToolError};
use super::{Ca, JAVA_ALIAS_PREFIX, Line, NEEDS_ROOT, Outcome};

/// cacerts' well-known password (the JDK's default).
const STOREPASS: &str = "changeit";
/// Where cacerts lives under a Java home (JDK 9+, then JDK 8's JRE).
const CACERTS: [&str; 2] = ["lib/security/cacerts", "jre/lib/security/cacerts"];

/// A JDK's cacerts and the keytool that changes it.
#[derive(Debug, Clone)]
pub struct JavaStore {
    keytool: PathBuf,
    cacerts: PathBuf,
}

impl JavaStore {
    /// The store of the JDK or JRE at `java_home`, if it has keytool and cacerts.
    pub fn at(java_home: &Path) -> Option<Self> {
        let keytool = java_home.join("bin/keytool");
        if !keytool.is_file() {
            return None;
        }
        let cacerts = CACERTS
            .iter()
            .map(|rel| java_home.join(rel))
            .find(|p| p.is_file())?;
        Some(Self { keytool, cacerts })
    }

    /// JAVA_HOME's store, else that of the JDK whose keytool is on PATH.
    pub fn discover() -> Option<Self> {
        if let Some(home) = std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
            return Self::at(Path::new(&home));
        }
        let keytool = std::fs::canonicalize(run::find_program("keytool")?).ok()?;
        Self::at(keytool.parent()?.parent()?)
    }

    /// Imports `ca` under its alias, unless it is there.
    pub fn trust(&self, ca: &Ca) -> Line {
        let alias = ca.java_alias();
        let outcome = (|| {
            if self.aliases()?.contains(&alias) {
                return Ok(Outcome::AlreadyTrusted);
            }
            if !writable(&self.cacerts) {
                return Ok(Outcome::Failed(NEEDS_ROOT.into()));
            }
            let import = [
                "-importcert",
                "-noprompt",
                "-trustcacerts",
                "-alias",
                &alias,
            ];
            let args = self.with_keystore(&import);
            run::tool_fed(&self.keytool, args, None, Some(ca.pem()))?;
            Ok(Outcome::Trusted)
        })();
        self.line(outcome)
    }

    /// Deletes every entry whose alias `ca:trust` gives.
    pub fn untrust(&self) -> Line {
        let outcome = (|| {
            let ours = self.aliases()?;
            if ours.is_empty() {
                return Ok(Outcome::NotTrusted);
            }
            if !writable(&self.cacerts) {
                return Ok(Outcome::Failed(NEEDS_ROOT.into()));
            }
            for alias in &ours {
                let delete = ["-delete", "-alias", alias.as_str()];
                run::tool(&self.keytool, self.with_keystore(&delete), None)?;
            }
            Ok(Outcome::Removed)
        })();
        self.line(outcome)
    }

    /// The aliases in cacerts that `ca:trust` gives.
    fn aliases(&self) -> Result<Vec<String>, ToolError> {
        let listing = run::tool(&self.keytool, self.with_keystore(&["-list"]), None)?;
        Ok(ours(&listing.stdout))
    }

    /// keytool's arguments: `args`, then which keystore and its password.
    fn with_keystore<'a>(&'a self, args: &[&'a str]) -> Vec<&'a OsStr> {
        let mut all: Vec<&OsStr> = args.iter().map(|a| OsStr::new(*a)).collect();
        all.extend([
            OsStr::new("-keystore"),
            self.cacerts.as_os_str(),
            OsStr::new("-storepass"),
            OsStr::new(STOREPASS),
        ]);
        all
    }

    fn line(&self, outcome: Result<Outcome, ToolError>) -> Line {
        Line {
            store: "java",
            location: self.cacerts.display().to_string(),
            outcome: outcome.unwrap_or_else(|e| Outcome::Failed(e.to_string())),
        }
    }
}

/// Whether this process may write `path` (root may write anything).
fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The aliases `ca:trust` gives in a `keytool -list` listing, whose entry lines are
/// `alias, date, entry type,`.
fn ours(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|line| line.starts_with(JAVA_ALIAS_PREFIX))
        .filter_map(|line| Some(line.split_once(',')?.0.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
