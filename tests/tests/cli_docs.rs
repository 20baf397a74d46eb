//! Shell completions and man pages come from the command lines themselves.

use std::process::Command;

use securely_tests::bin;

#[test]
fn completions_cover_every_command_and_man_pages_every_program() {
    for (shell, marker) in [
        ("bash", "_securelyctl()"),
        ("zsh", "#compdef securelyctl"),
        ("fish", "complete -c securelyctl"),
    ] {
        let out = Command::new(bin("securelyctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["site:link", "queue:push", "reload", "doctor"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("securelyctl"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "securely",
        "securelyctl",
        "securely-proxyd",
        "securely-dnsd",
        "securely-queued",
    ] {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
        assert!(
            text.contains(".TH") && text.contains(page),
            "{page}.1: {text}"
        );
    }
    let securely = std::fs::read_to_string(dir.path().join("securely.1")).unwrap();
    assert!(securely.contains("upgrade"), "{securely}");
}
