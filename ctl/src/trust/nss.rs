//! NSS databases, where Chromium, Chrome and Firefox on Linux look (not the system store):
//! `~/.pki/nssdb` (created when absent, as Chromium would), snap Chromium's, and every
//! Firefox profile (deb and snap). Changed with `certutil` from libnss3-tools.

use std::path::{Path, PathBuf};

use super::run::{self, ToolError};
use super::{Ca, Line, NSS_NICKNAME_PREFIX, Outcome, User};

/// The trust `ca:trust` gives: a CA for TLS servers (SSL), nothing for mail or code.
const TRUST_FLAGS: &str = "C,,";
/// What to install when certutil is missing.
const NO_CERTUTIL: &str =
    "certutil not found: install libnss3-tools (Fedora: nss-tools, Arch: nss)";
/// Chromium's (and Chrome's) database, under HOME.
const CHROMIUM_DB: &str = ".pki/nssdb";
/// Snap Chromium's database, under HOME.
const SNAP_CHROMIUM_DB: &str = "snap/chromium/current/.pki/nssdb";
/// Where Firefox keeps its profiles (deb/tarball, snap), under HOME.
const FIREFOX_ROOTS: [&str; 2] = [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"];
/// The file that makes a directory an NSS sql database.
const NSS_DB_FILE: &str = "cert9.db";
/// How many entries of one nickname `ca:untrust` deletes at most (certutil -D deletes one).
const MAX_DELETES: usize = 8;

/// One user's NSS databases.
#[derive(Debug, Clone)]
pub struct NssStores {
    user: User,
    certutil: Option<PathBuf>,
}

/// One database and how to report it.
struct Db {
    store: &'static str,
    dir: PathBuf,
    /// Chromium's own: created when absent.
    create: bool,
}

impl NssStores {
    /// `user`'s databases, changed with the certutil on PATH.
    pub fn new(user: User) -> Self {
        Self {
            user,
            certutil: run::find_program("certutil"),
        }
    }

    /// Installs `ca` in each database.
    pub fn trust(&self, ca: &Ca) -> Vec<Line> {
        self.each(|db| self.trust_one(db, ca))
    }

    /// Removes every certificate `ca:trust` added from each database.
    pub fn untrust(&self) -> Vec<Line> {
        self.each(|db| self.untrust_one(db))
    }

    fn each(&self, mut act: impl FnMut(&Db) -> Outcome) -> Vec<Line> {
        let Some(home) = &self.user.home else {
            let failed = |store| Line {
                store,
                location: String::new(),
                outcome: Outcome::Failed("HOME is not set".into()),
            };
            return vec![failed("nss"), failed("firefox")];
        };
        let databases = databases(home);
        let mut lines: Vec<Line> = databases
            .iter()
            .map(|db| Line {
                store: db.store,
                location: db.dir.display().to_string(),
                outcome: act(db),
            })
            .collect();
        if !databases.iter().any(|db| db.store == "firefox") {
            lines.push(Line {
                store: "firefox",
                location: String::new(),
                outcome: Outcome::NotPresent,
            });
        }
        lines
    }

    fn trust_one(&self, db: &Db, ca: &Ca) -> Outcome {
        let Some(certutil) = &self.certutil else {
            return Outcome::Failed(NO_CERTUTIL.into());
        };
        let exists = db.dir.join(NSS_DB_FILE).is_file();
        if !exists && !db.create {
            return Outcome::NotPresent;
        }
        let result = (|| {
            if !exists {
                self.create(certutil, &db.dir)?;
            }
            let nickname = ca.nss_nickname();
            let database = sql(&db.dir);
            let listed = self.list(certutil, &db.dir)?;
            match listed.iter().find(|(nick, _)| *nick == nickname) {
                Some((_, trust)) if ssl_trusted(trust) => Ok(Outcome::AlreadyTrusted),
                Some(_) => {
                    let args = ["-M", "-n", &nickname, "-t", TRUST_FLAGS, "-d", &database];
                    run::tool(certutil, args, self.user.ids)?;
                    Ok(Outcome::Trusted)
                }
                None => {
                    let args = ["-A", "-n", &nickname, "-t", TRUST_FLAGS, "-d", &database];
                    run::tool_fed(certutil, args, self.user.ids, Some(ca.pem()))?;
                    Ok(Outcome::Trusted)
                }
            }
        })();
        result.unwrap_or_else(|e: NssError| Outcome::Failed(e.to_string()))
    }

    fn untrust_one(&self, db: &Db) -> Outcome {
        if !db.dir.join(NSS_DB_FILE).is_file() {
            return Outcome::NotPresent;
        }
        let Some(certutil) = &self.certutil else {
            return Outcome::Failed(NO_CERTUTIL.into());
        };
        let result = (|| {
            let ours: Vec<String> = self
                .list(certutil, &db.dir)?
                .into_iter()
                .map(|(nick, _)| nick)
                .collect();
            if ours.is_empty() {
                return Ok(Outcome::NotTrusted);
            }
            let database = sql(&db.dir);
            for nickname in &ours {
                for _ in 0..MAX_DELETES {
                    let present = ["-L", "-n", nickname, "-d", &database];
                    if !run::ask(certutil, present, self.user.ids)?.0 {
                        break;
                    }
                    run::tool(
                        certutil,
                        ["-D", "-n", nickname, "-d", &database],
                        self.user.ids,
                    )?;
                }
            }
            Ok(Outcome::Removed)
        })();
        result.unwrap_or_else(|e: NssError| Outcome::Failed(e.to_string()))
    }

    /// Creates an empty database (no password), as Chromium would on first start.
    fn create(&self, certutil: &Path, dir: &Path) -> Result<(), NssError> {
        self.user
            .create_private_dir(dir)
            .map_err(|e| NssError::Create(dir.to_path_buf(), e))?;
        run::tool(
            certutil,
            ["-N", "--empty-password", "-d", &sql(dir)],
            self.user.ids,
        )?;
        Ok(())
    }

    /// The (nickname, trust flags) of every certificate `ca:trust` added.
    fn list(&self, certutil: &Path, dir: &Path) -> Result<Vec<(String, String)>, NssError> {
        let listing = run::tool(certutil, ["-L", "-d", &sql(dir)], self.user.ids)?;
        Ok(ours(&listing.stdout))
    }
}

/// Why a database could not be changed.
#[derive(Debug, thiserror::Error)]
enum NssError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, std::io::Error),
}

/// certutil's name for a sql database in `dir`.
fn sql(dir: &Path) -> String {
    format!("sql:{}", dir.display())
}

/// The databases under `home`: Chromium's (always), snap Chromium's and Firefox's
/// profiles (those that exist).
fn databases(home: &Path) -> Vec<Db> {
    let mut dbs = vec![Db {
        store: "nss",
        dir: home.join(CHROMIUM_DB),
        create: true,
    }];
    let snap = home.join(SNAP_CHROMIUM_DB);
    if snap.join(NSS_DB_FILE).is_file() {
        dbs.push(Db {
            store: "nss",
            dir: snap,
            create: false,
        });
    }
    for root in FIREFOX_ROOTS {
        let Ok(entries) = std::fs::read_dir(home.join(root)) else {
            continue;
        };
        let mut profiles: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.join(NSS_DB_FILE).is_file())
            .collect();
        profiles.sort();
        dbs.extend(profiles.into_iter().map(|dir| Db {
            store: "firefox",
            dir,
            create: false,
        }));
    }
    dbs
}

/// The entries of a `certutil -L` listing whose nickname is one `ca:trust` gives:
/// (nickname, trust flags). A line is the nickname, spaces, then the flags.
fn ours(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter(|line| line.starts_with(NSS_NICKNAME_PREFIX))
        .filter_map(|line| {
            let (nickname, trust) = line.trim_end().rsplit_once(char::is_whitespace)?;
            Some((nickname.trim_end().to_string(), trust.to_string()))
        })
        .collect()
}

/// Whether the flags make the certificate a trusted CA for TLS servers (the first field
/// has `C`).
fn ssl_trusted(flags: &str) -> bool {
    flags.split(',').next().is_some_and(|ssl| ssl.contains('C'))
}

#[cfg(test)]
mod tests;
