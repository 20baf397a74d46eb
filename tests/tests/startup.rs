//! Start-up and `securely -t`.

use std::process::Command;

use securely_tests::{Stack, StackConfig, bin};

#[test]
fn every_daemon_is_ready_in_status_json() {
    let stack = Stack::start();
    let status = stack.wait_all_ready();
    assert_eq!(status["supervisor"]["state"], "ready");
    assert_eq!(
        status["supervisor"]["pid"].as_u64().unwrap() as u32,
        stack.supervisor_pid()
    );
    let daemons = status["daemons"].as_array().unwrap();
    let names: Vec<_> = daemons
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["proxyd", "dnsd", "queued"]);
    for d in daemons {
        assert!(d["pid"].as_u64().unwrap() > 0, "{d}");
        assert_eq!(d["restarts"], 0, "{d}");
        let tree = d["tree"].as_str().unwrap();
        assert!(tree.ends_with(d["name"].as_str().unwrap()), "{d}");
        assert!(
            std::path::Path::new(tree).is_dir(),
            "sled tree {tree} exists"
        );
    }
    let proxyd = &daemons[0]["listeners"];
    assert!(
        proxyd
            .to_string()
            .contains(&format!("tcp://{}", stack.http)),
        "{proxyd}"
    );
    let dnsd = &daemons[1]["listeners"];
    assert!(
        dnsd.to_string().contains(&format!("udp://{}", stack.dns)),
        "{dnsd}"
    );
    assert!(
        dnsd.to_string().contains(&format!("tcp://{}", stack.dns)),
        "{dnsd}"
    );

    // The table form names every process too.
    let table = stack.ctl_ok(&["status"]);
    for name in ["supervisor", "proxyd", "dnsd", "queued"] {
        assert!(table.contains(name), "{table}");
    }
}

fn check(config_text: &str) -> (bool, String) {
    let stack = Stack::prepare(StackConfig::default());
    let path = stack.dir.path().join("check.yaml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(bin("securely"))
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_accepts_a_valid_config_and_warns_about_unknown_keys() {
    let stack = Stack::prepare(StackConfig::default());
    let out = stack.securely(&["-t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (ok, text) = check("threads: 2\nmy_plugin: {x: 1}\n");
    assert!(ok, "{text}");
    assert!(text.contains("unknown key my_plugin"), "{text}");
}

#[test]
fn check_rejects_broken_configs_naming_the_key() {
    let (ok, text) = check("proxy: [unclosed\n");
    assert!(!ok);
    assert!(text.contains("check.yaml"), "{text}");

    let (ok, text) = check("proxy:\n  listen: [\"127.0.0.1:99999\"]\n");
    assert!(!ok);
    assert!(text.contains("proxy.listen[0]"), "{text}");

    let (ok, text) =
        check("proxy:\n  listen: [\"127.0.0.1:8053\"]\ndns:\n  listen: [\"127.0.0.1:8053\"]\n");
    assert!(!ok);
    assert!(
        text.contains("dns.listen[0]") && text.contains("clashes"),
        "{text}"
    );

    let (ok, text) = check("threads: lots\n");
    assert!(!ok);
    assert!(text.contains("threads"), "{text}");

    let (ok, text) = check("dns:\n  addresses: [\"not-an-ip\"]\n  tld: \"bad tld\"\n");
    assert!(!ok);
    assert!(
        text.contains("dns.addresses[0]") && text.contains("dns.tld"),
        "{text}"
    );
}

#[test]
fn a_port_in_use_fails_start_up_with_the_reason() {
    let stack = Stack::prepare(StackConfig::default());
    let _taken = std::net::TcpListener::bind(stack.http).unwrap();
    let out = stack.securely(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.listen[0]") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn every_log_line_names_its_process() {
    let stack = Stack::start();
    stack.ctl_ok(&["restart", "dnsd"]);
    let log = stack.log();
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let name = line
            .split_once('[')
            .map(|(name, _)| name)
            .unwrap_or_else(|| panic!("no process prefix: {line}"));
        assert!(
            [
                "securely",
                "securely-proxyd",
                "securely-dnsd",
                "securely-queued"
            ]
            .contains(&name),
            "unexpected prefix: {line}"
        );
        seen.insert(name.to_string());
    }
    // The supervisor and at least the restarted daemon spoke.
    assert!(
        seen.contains("securely") && seen.contains("securely-dnsd"),
        "{seen:?}"
    );
}

#[test]
fn started_with_stdio_closed_no_socket_lands_on_a_standard_fd() {
    use std::os::unix::process::CommandExt;
    let mut stack = Stack::prepare(StackConfig::default());
    let mut command = Command::new(bin("securely"));
    command.arg("-c").arg(&stack.config);
    // SAFETY: close is async-signal-safe; the child then starts with 0-2 closed.
    unsafe {
        command.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    stack.supervisor = Some(command.spawn().expect("start securely"));
    stack.wait_all_ready();
    let pid = stack.supervisor_pid();
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
}
