//! The harness for Securely's cross-process tests.
//!
//! [`Stack::start`] runs the real `securely` supervisor (which runs the real daemons) on
//! free loopback ports with a temporary config, runtime dir and data dir. Tests then talk
//! to it as a user's tools would: `securelyctl`, HTTP, DNS packets, gRPC. The binaries come
//! from the workspace's target dir, so build them first: `cargo build --workspace`.

pub mod devserver;
pub mod dns;
pub mod http;
pub mod keepalive;
pub mod load;
pub mod tls;
pub mod watcher;
pub mod websocket;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a stack may take to come up in a test.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// The directory holding the workspace's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    for bin in [
        "securely",
        "securelyctl",
        "securely-proxyd",
        "securely-dnsd",
        "securely-queued",
    ] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace` before the tests",
            dir.join(bin).display()
        );
    }
    dir.to_path_buf()
}

/// A binary of the workspace.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A TCP and UDP port free on 127.0.0.1 right now, and never handed out before by this
/// test process (so two stacks of parallel tests cannot be given the same one).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && HANDED_OUT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(port)
        {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The settings of a test stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Extra YAML appended to the generated config.
    pub extra_yaml: String,
    /// DNS upstreams.
    pub upstreams: Vec<String>,
    /// Run copies of the binaries installed in the stack's own directory, so the test
    /// may replace them (an upgrade) or break them.
    pub own_binaries: bool,
    /// Extra environment for the supervisor.
    pub env: Vec<(String, String)>,
    /// A command the supervisor is started through (its path and arguments follow), e.g.
    /// `nsenter` into a namespace; empty: started directly.
    pub launcher: Vec<String>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            extra_yaml: "grace_period_seconds: 5\n".into(),
            upstreams: Vec::new(),
            own_binaries: false,
            env: Vec::new(),
            launcher: Vec::new(),
        }
    }
}

/// A running stack in a temporary directory.
pub struct Stack {
    /// The temporary directory (config, run/, data/, logs).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// proxyd's HTTP address.
    pub http: SocketAddr,
    /// proxyd's https address (`proxy.tls_listen`).
    pub https: SocketAddr,
    /// dnsd's address (UDP and TCP).
    pub dns: SocketAddr,
    /// The supervisor process, when started in the foreground.
    pub supervisor: Option<Child>,
    /// Where the binaries the stack runs are.
    pub bin_dir: PathBuf,
}

impl Stack {
    /// Writes a config for a fresh temp dir with free ports; does not start anything.
    pub fn prepare(config: StackConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("securely-test-")
            .tempdir()
            .expect("temp dir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "runtime_dir: {run}\ndata_dir: {data}\nproxy:\n  listen: [\"{http}\"]\n  tls_listen: [\"{https}\"]\n\
             dns:\n  listen: [\"{dns}\"]\n  upstreams: [{upstreams}]\n{extra}",
            run = dir.path().join("run").display(),
            data = dir.path().join("data").display(),
            extra = config.extra_yaml,
        );
        let config_path = dir.path().join("securely.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let bin_dir = if config.own_binaries {
            dir.path().join("bin")
        } else {
            bin_dir()
        };
        let stack = Self {
            dir,
            config: config_path,
            http,
            https,
            dns,
            supervisor: None,
            bin_dir,
        };
        if config.own_binaries {
            stack.install_binaries();
        }
        stack
    }

    /// Installs fresh copies of the built binaries into the stack's own `bin/` (new
    /// files renamed over the old paths, as a package upgrade does).
    pub fn install_binaries(&self) {
        std::fs::create_dir_all(&self.bin_dir).expect("bin dir");
        for name in [
            "securely",
            "securely-proxyd",
            "securely-dnsd",
            "securely-queued",
        ] {
            let staged = self.bin_dir.join(format!(".{name}.new"));
            std::fs::copy(bin(name), &staged).expect("copy a binary");
            std::fs::rename(&staged, self.bin_dir.join(name)).expect("install a binary");
        }
    }

    /// Replaces binary `name` in the stack's own `bin/` with a script that waits
    /// `seconds`, then runs the real one.
    pub fn slow_binary(&self, name: &str, seconds: u32) {
        self.script_binary(
            name,
            &format!("sleep {seconds}\nexec '{}' \"$@\"\n", bin(name).display()),
        );
    }

    /// Replaces binary `name` in the stack's own `bin/` with a stand-in that runs the real
    /// one and passes its hand-over lines through, but dies (status 1) when told
    /// `ACQUIRE`: the hand-over then fails after the old instance released its tree.
    pub fn dies_on_acquire_binary(&self, name: &str) {
        let real = bin(name);
        self.script_binary(
            name,
            &format!(
                "exec python3 - \"$@\" <<'EOF'\n{}\nEOF\n",
                DIES_ON_ACQUIRE.replace("{REAL}", &real.display().to_string())
            ),
        );
    }

    /// Replaces binary `name` in the stack's own `bin/` with a script that fails at once.
    pub fn break_binary(&self, name: &str) {
        self.script_binary(name, "echo 'broken build' >&2\nexit 3\n");
    }

    fn script_binary(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let staged = self.bin_dir.join(format!(".{name}.new"));
        std::fs::write(&staged, format!("#!/bin/sh\n{body}")).expect("write");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&staged, self.bin_dir.join(name)).expect("install a broken binary");
    }

    /// Starts a stack in the foreground and waits until every daemon is ready.
    pub fn start() -> Self {
        Self::start_with(StackConfig::default())
    }

    /// Like [`Stack::start`] with a custom config.
    pub fn start_with(config: StackConfig) -> Self {
        let env = config.env.clone();
        let launcher = config.launcher.clone();
        let mut stack = Self::prepare(config);
        let log = std::fs::File::create(stack.log_path()).expect("log file");
        let securely = stack.bin_dir.join("securely");
        let mut command = match launcher.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&securely);
                command
            }
            None => Command::new(&securely),
        };
        command
            .arg("-c")
            .arg(&stack.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("SECURELY_LOG", "info")
            .envs(env);
        // SAFETY: prctl is async-signal-safe. If the test process dies without running
        // Drop (killed, timed out), the stack is told to stop fast.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let child = command.spawn().expect("start securely");
        stack.supervisor = Some(child);
        stack.wait_all_ready();
        stack
    }

    /// Where the supervisor's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("securely.log")
    }

    /// The supervisor's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The runtime dir.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }

    /// A daemon's gRPC socket.
    pub fn socket(&self, daemon: &str) -> PathBuf {
        self.run_dir().join(format!("{daemon}.sock"))
    }

    /// The pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("securely.pid")
    }

    /// Runs `securely ARGS -c <config>` to completion (`-t`, `-d`, or a start that fails).
    pub fn securely(&self, args: &[&str]) -> Output {
        Command::new(bin("securely"))
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("run securely")
    }

    /// `upgrade_sock` in the runtime dir.
    pub fn upgrade_socket(&self) -> PathBuf {
        self.run_dir().join("upgrade.sock")
    }

    /// Starts `securely -u -d -c <config>` (output piped) and waits until it waits on
    /// `upgrade_sock` for the running supervisor's sockets.
    pub fn start_waiting_supervisor(&self) -> Child {
        let waiting = Command::new(bin("securely"))
            .args(["-u", "-d", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start securely -u");
        let upgrade_sock = self.upgrade_socket();
        wait_for("-u to wait on upgrade_sock", START_DEADLINE, || {
            upgrade_sock.exists().then_some(())
        });
        waiting
    }

    /// Runs `securelyctl --socket <control> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("securelyctl"))
            .arg("--socket")
            .arg(self.control_socket())
            .args(args)
            .output()
            .expect("run securelyctl")
    }

    /// Runs securelyctl and returns stdout, panicking with stderr on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "securelyctl {args:?} failed: {}\n--- supervisor log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `securelyctl status --json`, or `None` when the supervisor does not answer.
    pub fn status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status entry of daemon `name`.
    pub fn daemon_status(&self, name: &str) -> Option<Value> {
        self.status()?["daemons"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
    }

    /// The pid of daemon `name` when it is ready.
    pub fn ready_pid(&self, name: &str) -> Option<u32> {
        let d = self.daemon_status(name)?;
        (d["state"] == "ready")
            .then(|| d["pid"].as_u64())?
            .map(|p| p as u32)
    }

    /// Waits until every daemon is ready.
    pub fn wait_all_ready(&self) -> Value {
        wait_for("every daemon ready", START_DEADLINE, || {
            let status = self.status()?;
            let daemons = status["daemons"].as_array()?;
            (daemons.len() == 3 && daemons.iter().all(|d| d["state"] == "ready"))
                .then_some(status.clone())
        })
    }

    /// Waits until daemon `name` is ready with a pid other than `old`.
    pub fn wait_replaced(&self, name: &str, old: u32, deadline: Duration) -> u32 {
        wait_for(&format!("{name} replaced"), deadline, || {
            self.ready_pid(name).filter(|pid| *pid != old)
        })
    }

    /// Sends `signal` to the supervisor.
    pub fn signal_supervisor(&self, signal: nix::sys::signal::Signal) {
        let pid = self.supervisor_pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("signal the supervisor");
    }

    /// The supervisor's pid (from the pid file).
    pub fn supervisor_pid(&self) -> u32 {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("pid file names the supervisor")
    }

    /// A gRPC channel to daemon `name` (or "control").
    pub async fn channel(&self, name: &str) -> tonic::transport::Channel {
        let path = if name == "control" {
            self.control_socket()
        } else {
            self.socket(name)
        };
        tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect over the Unix socket")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let daemon_pids: Vec<i32> = self
            .status()
            .and_then(|s| {
                s["daemons"].as_array().map(|d| {
                    d.iter()
                        .filter_map(|d| d["pid"].as_i64().map(|p| p as i32))
                        .collect()
                })
            })
            .unwrap_or_default();
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if let Some(child) = self.supervisor.as_mut() {
            let give_up = Instant::now() + Duration::from_secs(5);
            while Instant::now() < give_up {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Daemons outliving their supervisor drain by themselves; kill any still here,
        // if it is still ours (its pid may have been reused by now).
        let ours = self.dir.path().display().to_string();
        for pid in daemon_pids {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).contains(&ours) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The stand-in of [`Stack::dies_on_acquire_binary`]: the real daemon gets a socket pair
/// of ours in place of the supervisor's notification socket; its lines go up as they are,
/// the supervisor's go down until `ACQUIRE`, which kills it.
const DIES_ON_ACQUIRE: &str = r#"
import os, socket, subprocess, sys
fd = int(os.environ["SECURELY_NOTIFY_FD"])
supervisor = socket.socket(fileno=os.dup(fd))
ours, theirs = socket.socketpair()
os.dup2(theirs.fileno(), fd)
daemon = subprocess.Popen(["{REAL}"] + sys.argv[1:], pass_fds=range(3, fd + 1))
os.close(fd)
theirs.close()
import selectors
sel = selectors.DefaultSelector()
sel.register(ours, selectors.EVENT_READ)
sel.register(supervisor, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        data = key.fileobj.recv(4096)
        if not data:
            daemon.kill()
            sys.exit(1)
        if key.fileobj is ours:
            supervisor.sendall(data)
        elif b"ACQUIRE" in data:
            daemon.kill()
            sys.exit(1)
        else:
            ours.sendall(data)
"#;

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
