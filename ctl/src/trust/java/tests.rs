//! Java's cacerts with the real keytool, in a Java home made of this machine's keytool and
//! a keystore of its own (never the JDK's cacerts).

use std::path::PathBuf;

use super::*;
use crate::trust::testca;

struct Jdk {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    cacerts: PathBuf,
}

/// A Java home whose cacerts holds one other CA.
fn jdk() -> Jdk {
    let keytool = run::find_program("keytool")
        .expect("these tests need keytool: apt-get install default-jre-headless");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("jdk");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::fs::create_dir_all(home.join("lib/security")).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(&keytool).unwrap(),
        home.join("bin/keytool"),
    )
    .unwrap();
    let cacerts = home.join("lib/security/cacerts");
    let other = testca::mint("Distro Root");
    let store = JavaStore {
        keytool: home.join("bin/keytool"),
        cacerts: cacerts.clone(),
    };
    let import = ["-importcert", "-noprompt", "-alias", "distro-root"];
    run::tool_fed(
        &store.keytool,
        store.with_keystore(&import),
        None,
        Some(other.pem()),
    )
    .unwrap();
    Jdk {
        _tmp: tmp,
        home,
        cacerts,
    }
}

fn aliases(store: &JavaStore) -> String {
    run::tool(&store.keytool, store.with_keystore(&["-list"]), None)
        .unwrap()
        .stdout
}

#[test]
fn trust_imports_the_ca_into_cacerts_and_untrust_deletes_only_it() {
    let jdk = jdk();
    let store = JavaStore::at(&jdk.home).expect("a Java home with keytool and cacerts");
    assert_eq!(store.cacerts, jdk.cacerts);
    let ca = testca::mint("Securely test CA");

    let line = store.trust(&ca);
    assert_eq!(line.outcome, Outcome::Trusted, "{line}");
    assert_eq!(line.location, jdk.cacerts.display().to_string());
    let listing = aliases(&store);
    assert!(
        listing.contains(&format!("{}, ", ca.java_alias())),
        "{listing}"
    );
    assert!(listing.contains("trustedCertEntry"), "{listing}");

    assert_eq!(store.trust(&ca).outcome, Outcome::AlreadyTrusted);

    assert_eq!(store.untrust().outcome, Outcome::Removed);
    let listing = aliases(&store);
    assert!(!listing.contains(JAVA_ALIAS_PREFIX), "{listing}");
    assert!(listing.contains("distro-root, "), "{listing}");

    assert_eq!(store.untrust().outcome, Outcome::NotTrusted);
}

#[test]
fn a_java_home_without_keytool_or_cacerts_is_no_store() {
    let jdk = jdk();
    std::fs::remove_file(&jdk.cacerts).unwrap();
    assert!(JavaStore::at(&jdk.home).is_none());
    assert!(JavaStore::at(&jdk.home.join("nothing")).is_none());
}

#[test]
fn ours_reads_keytools_listing() {
    let listing = "Keystore type: PKCS12\nKeystore provider: SUN\n\nYour keystore contains 2 entries\n\n\
                   distro-root, Jan 1, 2025, trustedCertEntry,\n\
                   Certificate fingerprint (SHA-256): AB:CD\n\
                   securely-local-ca-0123456789abcdef, Jan 2, 2025, trustedCertEntry,\n";
    assert_eq!(ours(listing), ["securely-local-ca-0123456789abcdef"]);
}
