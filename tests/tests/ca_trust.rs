//! `securelyctl ca:trust` / `ca:untrust` against a running stack: the CA proxyd exports
//! lands in a throw-away HOME's NSS databases (checked with the real certutil) and in a
//! system anchor file of the test's own (`SECURELY_CA_SYSTEM_ANCHOR`), and comes out again.
//! Nothing of this machine's stores is touched: HOME, JAVA_HOME and the anchor are the
//! test's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use securely_tests::{Stack, bin};

/// A throw-away HOME with one Firefox profile, a system anchor path, no JDK.
struct Place {
    tmp: tempfile::TempDir,
    home: PathBuf,
    profile: PathBuf,
    anchor_dir: PathBuf,
}

impl Place {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let profile = home.join(".mozilla/firefox/t3st.default-release");
        std::fs::create_dir_all(&profile).unwrap();
        certutil(&["-N", "--empty-password", "-d", &sql(&profile)]);
        let anchor_dir = tmp.path().join("anchors");
        std::fs::create_dir_all(&anchor_dir).unwrap();
        Self {
            home,
            profile,
            anchor_dir,
            tmp,
        }
    }

    fn anchor(&self) -> PathBuf {
        self.anchor_dir.join("securely-local-ca.crt")
    }

    fn chromium(&self) -> PathBuf {
        self.home.join(".pki/nssdb")
    }

    /// `securelyctl ARGS` for this place's stores.
    fn ctl(&self, stack: &Stack, args: &[&str]) -> Command {
        let mut command = Command::new(bin("securelyctl"));
        command
            .arg("--socket")
            .arg(stack.control_socket())
            .args(args)
            .env("HOME", &self.home)
            .env("JAVA_HOME", self.tmp.path().join("no-jdk"))
            .env("SECURELY_CA_SYSTEM_ANCHOR", self.anchor())
            .env_remove("SECURELY_CA_SYSTEM_UPDATE")
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID");
        command
    }

    /// The lines every store reports when each says `outcome`.
    fn lines(&self, outcome: &str) -> String {
        format!(
            "system  {}: {outcome}\nnss     {}: {outcome}\nfirefox {}: {outcome}\njava    not present\n",
            self.anchor().display(),
            self.chromium().display(),
            self.profile.display()
        )
    }
}

fn sql(dir: &Path) -> String {
    format!("sql:{}", dir.display())
}

fn certutil(args: &[&str]) -> String {
    let out = Command::new("certutil")
        .args(args)
        .output()
        .expect("certutil is needed: apt-get install libnss3-tools");
    assert!(out.status.success(), "certutil {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The nicknames `ca:trust` gives in `db`, with their trust flags.
fn ours(db: &Path) -> Vec<(String, String)> {
    certutil(&["-L", "-d", &sql(db)])
        .lines()
        .filter(|l| l.starts_with("Securely local CA "))
        .map(|l| {
            let (nick, trust) = l.trim_end().rsplit_once(' ').unwrap();
            (nick.trim_end().to_string(), trust.to_string())
        })
        .collect()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ca_trust_installs_proxyds_ca_in_every_store_and_ca_untrust_takes_it_out() {
    let stack = Stack::start();
    let place = Place::new();
    let pem = stack.ctl_ok(&["ca:export"]);

    let out = place.ctl(&stack, &["ca:trust"]).output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", stack.log());
    assert_eq!(stdout(&out), place.lines("trusted"));

    // The very certificate proxyd exports, with trust C for TLS servers, in both databases.
    for db in [place.chromium(), place.profile.clone()] {
        let entries = ours(&db);
        assert_eq!(entries.len(), 1, "{}: {entries:?}", db.display());
        let (nickname, trust) = &entries[0];
        assert_eq!(trust, "C,,");
        let installed = certutil(&["-L", "-n", nickname, "-a", "-d", &sql(&db)]);
        assert_eq!(installed.replace('\r', "").trim(), pem.trim());
    }
    assert_eq!(std::fs::read_to_string(place.anchor()).unwrap(), pem);

    let again = place.ctl(&stack, &["ca:trust"]).output().unwrap();
    assert_eq!(stdout(&again), place.lines("already trusted"));

    let out = place.ctl(&stack, &["ca:untrust"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), place.lines("removed"));
    assert!(ours(&place.chromium()).is_empty() && ours(&place.profile).is_empty());
    assert!(!place.anchor().exists());

    let again = place.ctl(&stack, &["ca:untrust"]).output().unwrap();
    assert_eq!(stdout(&again), place.lines("not trusted"));
}

#[test]
fn without_root_the_system_line_says_to_use_sudo_and_the_other_stores_are_still_changed() {
    let stack = Stack::start();
    let place = Place::new();
    if !nix::unistd::geteuid().is_root() {
        // As a user: the anchor's directory is root's.
        let out = place
            .ctl(&stack, &["ca:trust"])
            .env("SECURELY_CA_SYSTEM_ANCHOR", "/securely-local-ca-test.crt")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = stdout(&out);
        assert!(
            text.starts_with(
                "system  /securely-local-ca-test.crt: failed: needs root, run with sudo\n"
            ),
            "{text}"
        );
        assert!(text.contains(": trusted\n"), "{text}");
        return;
    }
    // As root: trust, then untrust as nobody, who owns the HOME but not the anchor.
    let out = place.ctl(&stack, &["ca:trust"]).output().unwrap();
    assert_eq!(stdout(&out), place.lines("trusted"));
    let chown = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(&place.home)
        .status()
        .unwrap();
    assert!(chown.success());
    let traverse = |dir: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    traverse(place.tmp.path());
    traverse(&place.anchor_dir);
    let mut untrust = place.ctl(&stack, &["ca:untrust"]);
    let args: Vec<_> = std::iter::once(untrust.get_program().to_owned())
        .chain(untrust.get_args().map(|a| a.to_owned()))
        .collect();
    let envs: Vec<_> = untrust
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    untrust = Command::new("setpriv");
    untrust
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(args)
        .envs(envs);
    let out = untrust.output().unwrap();
    assert!(!out.status.success(), "a failed store fails the command");
    let text = stdout(&out);
    assert_eq!(
        text,
        format!(
            "system  {}: failed: needs root, run with sudo\nnss     {}: removed\nfirefox {}: removed\njava    not present\n",
            place.anchor().display(),
            place.chromium().display(),
            place.profile.display()
        )
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 4 stores not changed"),
        "{out:?}"
    );
    assert!(place.anchor().exists());
}
