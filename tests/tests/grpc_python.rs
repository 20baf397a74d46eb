//! Python's grpcio, unchanged (`grpc.insecure_channel("unix:" + path)`, no authority
//! option), calls every socket: it runs `examples/python/queue_push.py` (health, reflection,
//! a queue push) against a real stack, and the pushed job is then reserved back. A second
//! test follows the stack with `examples/python/watch.py` (Supervisor.Watch) through a
//! daemon's SIGKILL and recovery.
//!
//! Both run with every Python that has grpcio, grpcio-tools and protobuf among
//! `$SECURELY_TEST_PYTHON`, the venv `.ci/run` makes in `target/pyenv` (pip's grpcio,
//! which sends the socket path as `:authority`) and `/usr/bin/python3` (Debian's
//! `python3-grpcio`, which sends `localhost`). In CI (`CI` set) each of them must have the
//! modules; elsewhere one without is reported and left out.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use securely_proto::queue::ReserveRequest;
use securely_proto::queue::queue_client::QueueClient;
use securely_tests::Stack;

/// The services each socket must list through reflection.
const EXPECTED: [(&str, &str); 4] = [
    ("control", "securely.supervisor.v1.Supervisor"),
    ("proxyd", "securely.proxy.v1.ProxyAdmin"),
    ("dnsd", "securely.dns.v1.DnsAdmin"),
    ("queued", "securely.queue.v1.Queue"),
];

/// What the example needs from a Python.
const PROBE: &str = "import grpc, grpc_tools.protoc, google.protobuf";

/// How to get the Pythons this test looks for.
const INSTALL: &str = "install Debian's clients (apt-get install python3-grpcio \
    python3-grpc-tools python3-protobuf) and pip's (python3 -m venv target/pyenv && \
    target/pyenv/bin/pip install -r examples/python/requirements.txt), as .ci/run does";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The Pythons to run the example with.
fn candidates() -> Vec<PathBuf> {
    let explicit = std::env::var_os("SECURELY_TEST_PYTHON").map(PathBuf::from);
    explicit
        .into_iter()
        .chain([
            workspace().join("target/pyenv/bin/python3"),
            PathBuf::from("/usr/bin/python3"),
        ])
        .collect()
}

fn has_grpc(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", PROBE])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The Pythons with grpcio (in CI, every candidate must have it).
fn pythons() -> Vec<PathBuf> {
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let mut pythons = Vec::new();
    for python in candidates() {
        if has_grpc(&python) {
            pythons.push(python);
        } else if in_ci {
            panic!("{} has no grpcio: {INSTALL}", python.display());
        } else {
            eprintln!(
                "not run with {}: no grpcio there; {INSTALL}",
                python.display()
            );
        }
    }
    if pythons.is_empty() {
        eprintln!("skipped: no Python with grpcio");
    }
    pythons
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_calls_health_reflection_and_push_unchanged() {
    let pythons = pythons();
    if pythons.is_empty() {
        return;
    }

    let stack = Stack::start();
    let mut queued = QueueClient::new(stack.channel("queued").await);
    for (n, python) in pythons.iter().enumerate() {
        let queue = format!("from-python-{n}");
        let payload = format!("{{\"sent_by\":\"{}\"}}", python.display());
        let out = Command::new(python)
            .arg(workspace().join("examples/python/queue_push.py"))
            .arg("--run-dir")
            .arg(stack.run_dir())
            .args([&queue, &payload])
            .output()
            .expect("run the example");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = format!(
            "{}:\n{stdout}{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{report}");
        eprintln!("{report}");

        for (socket, service) in EXPECTED {
            assert!(
                stdout.contains(&format!("{socket}.sock: SERVING\n")),
                "{report}"
            );
            let services = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{socket}.sock services: ")))
                .unwrap_or_else(|| panic!("no services of {socket}: {report}"));
            let services: Vec<_> = services.split(' ').collect();
            assert!(services.contains(&service), "{report}");
            assert!(services.contains(&"grpc.health.v1.Health"), "{report}");
        }

        let id: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pushed job "))
            .and_then(|rest| rest.strip_suffix(&format!(" to {queue}")))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no pushed job id: {report}"));
        let job = queued
            .reserve(ReserveRequest {
                queue: queue.clone(),
                timeout_seconds: 0,
                wait_seconds: 0,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("the job pushed from Python is not there: {e}"))
            .into_inner();
        assert_eq!(job.id, id);
        assert_eq!(job.payload, payload.as_bytes());
    }
}

/// How long the Python watcher may take to see an event.
const WATCH_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn python_grpcio_watches_a_killed_daemon_come_back() {
    let pythons = pythons();
    if pythons.is_empty() {
        return;
    }
    let stack = Stack::start();
    stack.wait_all_ready();
    for python in &pythons {
        let mut watcher = Command::new(python)
            .arg(workspace().join("examples/python/watch.py"))
            .arg("--run-dir")
            .arg(stack.run_dir())
            .args(["--until", "daemon:ready"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the example");
        let mut lines = BufReader::new(watcher.stdout.take().expect("piped")).lines();
        // The current state first: the phase, then each daemon.
        let first = lines.next().expect("a first event").expect("a line");
        assert!(
            first.contains(" phase - running "),
            "{}: {first}",
            python.display()
        );
        let mut seen = vec![first];
        for _ in 0..3 {
            seen.push(lines.next().expect("a snapshot").expect("a line"));
        }
        let old = stack.ready_pid("dnsd").unwrap();
        assert!(
            seen.iter()
                .any(|l| l.contains(&format!(" snapshot dnsd ready {old} "))),
            "{seen:#?}"
        );
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = watcher.try_wait().expect("wait for the example") {
                break status;
            }
            assert!(started.elapsed() < WATCH_WITHIN, "no dnsd ready event");
            std::thread::sleep(Duration::from_millis(50));
        };
        seen.extend(lines.map_while(Result::ok));
        let mut stderr = String::new();
        let _ = watcher
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr);
        assert!(
            status.success(),
            "{}: {seen:#?}\n{stderr}",
            python.display()
        );
        let exited = seen
            .iter()
            .position(|l| l.contains(&format!(" daemon dnsd exited {old} killed by SIGKILL")))
            .unwrap_or_else(|| panic!("{seen:#?}"));
        let ready = seen.len() - 1;
        assert!(seen[ready].contains(" daemon dnsd ready "), "{seen:#?}");
        assert!(exited < ready, "{seen:#?}");
        let seqs: Vec<u64> = seen[3..]
            .iter()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seen:#?}");
    }
}
