//! NSS stores with the real certutil, in a throw-away HOME.

use std::path::{Path, PathBuf};

use super::*;
use crate::trust::testca;

fn certutil() -> PathBuf {
    run::find_program("certutil")
        .expect("certutil is needed by these tests: apt-get install libnss3-tools")
}

/// An empty NSS database in `dir`, as a browser creates it.
fn new_db(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run::tool(
        &certutil(),
        ["-N", "--empty-password", "-d", &sql(dir)],
        None,
    )
    .unwrap();
}

/// Every (nickname, trust) in the database.
fn listed(dir: &Path) -> Vec<(String, String)> {
    let out = run::tool(&certutil(), ["-L", "-d", &sql(dir)], None).unwrap();
    out.stdout
        .lines()
        .skip(4) // header, column names, blank line
        .filter_map(|l| {
            let (nick, trust) = l.trim_end().rsplit_once(char::is_whitespace)?;
            Some((nick.trim_end().to_string(), trust.to_string()))
        })
        .collect()
}

fn outcomes(lines: &[Line]) -> Vec<(String, Outcome)> {
    lines
        .iter()
        .map(|l| (format!("{} {}", l.store, l.location), l.outcome.clone()))
        .collect()
}

struct Home {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    chromium: PathBuf,
    firefox: PathBuf,
    snap_firefox: PathBuf,
}

/// A HOME with a deb Firefox profile, a snap Firefox profile, a Firefox folder that is no
/// profile, and no Chromium database yet.
fn home() -> Home {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let firefox = home.join(".mozilla/firefox/abcd1234.default-release");
    let snap_firefox = home.join("snap/firefox/common/.mozilla/firefox/wxyz.default");
    new_db(&firefox);
    new_db(&snap_firefox);
    std::fs::create_dir_all(home.join(".mozilla/firefox/Crash Reports")).unwrap();
    Home {
        chromium: home.join(".pki/nssdb"),
        _tmp: tmp,
        home,
        firefox,
        snap_firefox,
    }
}

#[test]
fn trust_adds_the_ca_with_trust_c_to_chromium_and_every_firefox_profile_and_untrust_removes_it() {
    let h = home();
    let stores = NssStores::new(User::with_home(&h.home));
    let ca = testca::mint("Securely test CA");
    let nickname = ca.nss_nickname();
    let dbs = [&h.chromium, &h.firefox, &h.snap_firefox];
    let each = |outcome: Outcome| -> Vec<(String, Outcome)> {
        let mut all: Vec<_> = dbs
            .iter()
            .map(|d| {
                let store = if *d == &h.chromium { "nss" } else { "firefox" };
                (format!("{store} {}", d.display()), outcome.clone())
            })
            .collect();
        all.sort();
        all
    };
    let sorted = |lines: Vec<Line>| {
        let mut o = outcomes(&lines);
        o.sort();
        o
    };

    // A certificate of someone else's in one profile: untrust must leave it.
    let other = testca::mint("Someone else's CA");
    run::tool_fed(
        &certutil(),
        ["-A", "-n", "Other CA", "-t", "C,,", "-d", &sql(&h.firefox)],
        None,
        Some(other.pem()),
    )
    .unwrap();

    assert_eq!(sorted(stores.trust(&ca)), each(Outcome::Trusted));
    for db in dbs {
        assert!(
            listed(db).contains(&(nickname.clone(), "C,,".into())),
            "{}: {:?}",
            db.display(),
            listed(db)
        );
    }
    assert!(
        h.chromium.join("cert9.db").is_file(),
        "Chromium's db created"
    );

    assert_eq!(sorted(stores.trust(&ca)), each(Outcome::AlreadyTrusted));

    assert_eq!(sorted(stores.untrust()), each(Outcome::Removed));
    for db in dbs {
        assert!(
            !listed(db)
                .iter()
                .any(|(n, _)| n.starts_with(NSS_NICKNAME_PREFIX)),
            "{}: {:?}",
            db.display(),
            listed(db)
        );
    }
    assert!(listed(&h.firefox).contains(&("Other CA".into(), "C,,".into())));

    assert_eq!(sorted(stores.untrust()), each(Outcome::NotTrusted));
}

#[test]
fn untrust_removes_the_entries_of_every_ca_trust_was_given() {
    let h = home();
    let stores = NssStores::new(User::with_home(&h.home));
    let (old, new) = (testca::mint("old"), testca::mint("new"));
    stores.trust(&old);
    stores.trust(&new);
    let ours: Vec<String> = listed(&h.chromium).into_iter().map(|(n, _)| n).collect();
    assert!(ours.contains(&old.nss_nickname()) && ours.contains(&new.nss_nickname()));
    assert!(
        stores
            .untrust()
            .iter()
            .all(|l| l.outcome == Outcome::Removed)
    );
    assert!(listed(&h.chromium).is_empty(), "{:?}", listed(&h.chromium));
}

#[test]
fn an_entry_without_ssl_trust_is_given_it() {
    let h = home();
    let ca = testca::mint("CA");
    new_db(&h.chromium);
    run::tool_fed(
        &certutil(),
        [
            "-A",
            "-n",
            &ca.nss_nickname(),
            "-t",
            ",,",
            "-d",
            &sql(&h.chromium),
        ],
        None,
        Some(ca.pem()),
    )
    .unwrap();
    let lines = NssStores::new(User::with_home(&h.home)).trust(&ca);
    assert_eq!(lines[0].outcome, Outcome::Trusted);
    assert!(listed(&h.chromium).contains(&(ca.nss_nickname(), "C,,".into())));
}

#[test]
fn a_home_without_browsers_gets_chromiums_db_and_says_firefox_is_not_present() {
    let tmp = tempfile::tempdir().unwrap();
    let stores = NssStores::new(User::with_home(tmp.path()));
    let untrusted = stores.untrust();
    assert_eq!(
        outcomes(&untrusted),
        [
            (
                format!("nss {}", tmp.path().join(".pki/nssdb").display()),
                Outcome::NotPresent
            ),
            ("firefox ".into(), Outcome::NotPresent)
        ]
    );
    assert!(!tmp.path().join(".pki").exists(), "untrust creates nothing");
    assert_eq!(untrusted[1].to_string(), "firefox not present");

    let trusted = stores.trust(&testca::mint("CA"));
    assert_eq!(trusted[0].outcome, Outcome::Trusted);
    assert_eq!(trusted[1].outcome, Outcome::NotPresent);
}

#[test]
fn without_certutil_each_line_says_to_install_libnss3_tools() {
    let h = home();
    let stores = NssStores {
        user: User::with_home(&h.home),
        certutil: None,
    };
    let lines = stores.trust(&testca::mint("CA"));
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert!(
            line.to_string().ends_with(
                "failed: certutil not found: install libnss3-tools (Fedora: nss-tools, Arch: nss)"
            ),
            "{line}"
        );
    }
}

#[test]
fn ours_reads_certutils_listing() {
    let listing = "\nCertificate Nickname                                         Trust Attributes\n\
                   \x20                                                            SSL,S/MIME,JAR/XPI\n\n\
                   Securely local CA 0123456789abcdef                           C,,  \n\
                   Other CA                                                     CT,C,C\n\
                   Securely local CA fedcba9876543210                           ,,\n";
    assert_eq!(
        ours(listing),
        [
            ("Securely local CA 0123456789abcdef".into(), "C,,".into()),
            ("Securely local CA fedcba9876543210".into(), ",,".into())
        ]
    );
    assert!(ssl_trusted("CT,C,C") && ssl_trusted("C,,") && !ssl_trusted(",C,"));
}

#[test]
fn under_sudo_certutil_runs_as_the_user_and_what_it_creates_is_theirs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        return; // only root may run a tool as someone else
    }
    const NOBODY: u32 = 65534;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let stores = NssStores::new(User {
        home: Some(home.clone()),
        ids: Some((NOBODY, NOBODY)),
    });
    let ca = testca::mint("CA");

    assert_eq!(stores.trust(&ca)[0].outcome, Outcome::Trusted);
    for path in [
        ".pki",
        ".pki/nssdb",
        ".pki/nssdb/cert9.db",
        ".pki/nssdb/key4.db",
    ] {
        let meta = std::fs::metadata(home.join(path)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "{path} is the user's"
        );
    }
    assert!(listed(&home.join(".pki/nssdb")).contains(&(ca.nss_nickname(), "C,,".into())));
    assert_eq!(stores.untrust()[0].outcome, Outcome::Removed);
}
