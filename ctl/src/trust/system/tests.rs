//! The system store with Debian's real update-ca-certificates, every directory of it in a
//! temporary tree (its --certsconf, --certsdir, --localcertsdir, --etccertsdir and
//! --hooksdir options), never this machine's.

use std::path::{Path, PathBuf};

use super::*;
use crate::trust::testca;

struct Tree {
    _tmp: tempfile::TempDir,
    anchor: PathBuf,
    etc_certs: PathBuf,
    bundle: PathBuf,
    update: Vec<String>,
}

/// A Debian-shaped store holding one distro CA.
fn tree() -> Tree {
    let tool = run::find_program("update-ca-certificates")
        .expect("these tests need Debian's update-ca-certificates (package ca-certificates)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = |rel: &str| {
        let d = root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (certs, local, etc_certs, hooks) = (
        dir("usr/share/ca-certificates"),
        dir("usr/local/share/ca-certificates"),
        dir("etc/ssl/certs"),
        dir("etc/ca-certificates/update.d"),
    );
    std::fs::create_dir_all(certs.join("distro")).unwrap();
    std::fs::write(
        certs.join("distro/Distro_Root.crt"),
        testca::mint("Distro Root").pem(),
    )
    .unwrap();
    let conf = root.join("etc/ca-certificates.conf");
    std::fs::write(&conf, "distro/Distro_Root.crt\n").unwrap();
    let arg = |p: &Path| p.display().to_string();
    let mut update = vec![arg(&tool)];
    for (option, path) in [
        ("--certsconf", &conf),
        ("--certsdir", &certs),
        ("--localcertsdir", &local),
        ("--etccertsdir", &etc_certs),
        ("--hooksdir", &hooks),
    ] {
        update.extend([option.to_string(), arg(path)]);
    }
    Tree {
        anchor: local.join("securely-local-ca.crt"),
        bundle: etc_certs.join("ca-certificates.crt"),
        etc_certs,
        update,
        _tmp: tmp,
    }
}

impl Tree {
    fn store(&self) -> SystemStore {
        let mut after_remove = self.update.clone();
        after_remove.push("--fresh".into());
        SystemStore::new(self.anchor.clone(), self.update.clone(), after_remove)
    }

    fn bundle_has(&self, ca: &Ca) -> bool {
        let bundle = std::fs::read_to_string(&self.bundle).unwrap();
        bundle.contains(ca.pem().trim())
    }

    fn linked(&self) -> bool {
        self.etc_certs.join("securely-local-ca.pem").is_symlink()
    }
}

#[test]
fn trust_writes_the_anchor_and_rebuilds_the_bundle_and_untrust_takes_it_out() {
    let t = tree();
    let store = t.store();
    let ca = testca::mint("Securely test CA");

    let line = store.trust(&ca);
    assert_eq!(line.outcome, Outcome::Trusted, "{line}");
    assert_eq!(line.location, t.anchor.display().to_string());
    assert_eq!(std::fs::read_to_string(&t.anchor).unwrap(), ca.pem());
    assert!(t.bundle_has(&ca) && t.linked());

    assert_eq!(store.trust(&ca).outcome, Outcome::AlreadyTrusted);

    // A new CA (proxyd's data wiped) replaces the old one.
    let new = testca::mint("Securely test CA 2");
    assert_eq!(store.trust(&new).outcome, Outcome::Trusted);
    assert!(t.bundle_has(&new) && !t.bundle_has(&ca));

    let line = store.untrust();
    assert_eq!(line.outcome, Outcome::Removed, "{line}");
    assert!(!t.anchor.exists() && !t.bundle_has(&new) && !t.linked());
    let bundle = std::fs::read_to_string(&t.bundle).unwrap();
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        1,
        "the distro CA stays"
    );

    assert_eq!(store.untrust().outcome, Outcome::NotTrusted);
}

#[test]
fn a_failed_rebuild_puts_the_previous_anchor_back() {
    let t = tree();
    let ca = testca::mint("CA");
    let failing = SystemStore::new(t.anchor.clone(), vec!["false".into()], vec!["false".into()]);

    let line = failing.trust(&ca);
    assert_eq!(
        line.outcome,
        Outcome::Failed("false: exited with an error".into())
    );
    assert!(!t.anchor.exists(), "no anchor left behind");

    assert_eq!(t.store().trust(&ca).outcome, Outcome::Trusted);
    let new = testca::mint("CA 2");
    assert!(matches!(failing.trust(&new).outcome, Outcome::Failed(_)));
    assert_eq!(std::fs::read_to_string(&t.anchor).unwrap(), ca.pem());
    assert!(matches!(failing.untrust().outcome, Outcome::Failed(_)));
    assert_eq!(std::fs::read_to_string(&t.anchor).unwrap(), ca.pem());
}

#[test]
fn an_anchor_directory_that_is_not_there_fails_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let anchor = tmp.path().join("missing/securely-local-ca.crt");
    let store = SystemStore::new(anchor.clone(), vec![], vec![]);
    let Outcome::Failed(why) = store.trust(&testca::mint("CA")).outcome else {
        panic!("trust into a missing directory succeeded");
    };
    assert!(why.contains("missing/securely-local-ca.crt"), "{why}");
    assert_eq!(store.untrust().outcome, Outcome::NotTrusted);
}

#[test]
fn permission_denied_means_root_is_needed() {
    let denied = std::io::Error::from(ErrorKind::PermissionDenied);
    assert_eq!(io_reason(Path::new("/x"), &denied), NEEDS_ROOT);
}

#[test]
fn this_debian_machine_is_found_to_use_update_ca_certificates() {
    if std::env::var_os(ENV_ANCHOR).is_some()
        || run::find_program("update-ca-certificates").is_none()
    {
        return;
    }
    let store = SystemStore::discover().expect("Debian's store");
    assert_eq!(
        store.anchor,
        Path::new("/usr/local/share/ca-certificates/securely-local-ca.crt")
    );
    assert!(store.after_add[0].ends_with("/update-ca-certificates"));
    assert_eq!(store.after_add.len(), 1);
    assert_eq!(store.after_remove[1..], ["--fresh".to_string()]);
}
