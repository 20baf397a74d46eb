//! The driver as a supervisor sees it: a real notification socket pair, a real gRPC
//! socket and a real sled tree, with a tenant and a data plane that record what the
//! driver asks of them.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use securely_proto::daemon::DaemonStatusRequest;
use securely_proto::daemon::daemon_control_client::DaemonControlClient;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::service::Routes;

use super::*;
use crate::listen_fds::InheritedFds;
use crate::readiness::Notifier;
use crate::settings::Settings;
use crate::tenure::{Answering, BoxError, CloseError, DataPlane, Tenant};

/// How long a test waits for a line from the daemon.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

type Journal = Arc<Mutex<Vec<String>>>;

fn note(journal: &Journal, what: impl Into<String>) {
    journal.lock().unwrap().push(what.into());
}

/// A tenant over a real sled tree.
struct Recorder {
    tree: PathBuf,
    journal: Journal,
    /// Fail the next close.
    fail_close: bool,
    /// Never finish opening.
    hang_open: bool,
}

impl Tenant for Recorder {
    type Tenure = sled::Db;

    async fn open(&mut self) -> Result<sled::Db, BoxError> {
        note(&self.journal, "open");
        if self.hang_open {
            std::future::pending::<()>().await;
        }
        let tree = self.tree.clone();
        let db = tokio::task::spawn_blocking(move || {
            crate::store::open_tree(&tree, crate::store::OPEN_DEADLINE)
        })
        .await??;
        Ok(db)
    }

    fn routes(&self, _tenure: &sled::Db) -> Routes {
        Routes::default()
    }

    fn status(&self, tenure: &sled::Db) -> String {
        format!("{} keys", tenure.len())
    }

    fn ending(&self, _tenure: &sled::Db) {
        note(&self.journal, "ending");
    }

    async fn close(
        &mut self,
        tenure: sled::Db,
        _cut_short: impl Future<Output = ()>,
    ) -> Result<(), CloseError> {
        note(&self.journal, "close");
        if std::mem::take(&mut self.fail_close) {
            return Err(CloseError::Failed("the disk is gone".into()));
        }
        tenure
            .flush()
            .map(drop)
            .map_err(|e| CloseError::Failed(e.into()))
    }
}

/// A data plane whose answering the test decides.
struct Plane {
    journal: Journal,
    answering: Option<oneshot::Receiver<Result<(), String>>>,
    failure: Option<oneshot::Receiver<String>>,
}

impl DataPlane for Plane {
    fn listeners(&self) -> Vec<String> {
        vec!["tcp://127.0.0.1:1".into()]
    }

    fn start(&mut self) -> Result<Answering, BoxError> {
        note(&self.journal, "start");
        let answering = self.answering.take().expect("started once");
        Ok(Box::pin(async move {
            match answering.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err("the test went away".into()),
            }
        }))
    }

    async fn failed(&mut self) -> BoxError {
        match self.failure.as_mut() {
            Some(failure) => match failure.await {
                Ok(e) => e.into(),
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    async fn stop(
        &mut self,
        kind: ShutdownKind,
        _deadline: Instant,
        _fast: impl Future<Output = ()>,
    ) {
        note(&self.journal, format!("stop {kind:?}"));
    }
}

/// The test's end of everything.
struct Harness {
    dir: tempfile::TempDir,
    journal: Journal,
    lines: BufReader<UnixStream>,
    commands: UnixStream,
    answer: Option<oneshot::Sender<Result<(), String>>>,
    fail: Option<oneshot::Sender<String>>,
}

impl Harness {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/test.sock")
    }

    /// Reads lines until `wanted`; returns those before it.
    fn expect(&mut self, wanted: &str) -> Vec<String> {
        let give_up = std::time::Instant::now() + LINE_TIMEOUT;
        let mut before = Vec::new();
        loop {
            assert!(
                std::time::Instant::now() < give_up,
                "no {wanted}: {before:?}"
            );
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => panic!("the daemon closed its end before {wanted}: {before:?}"),
                Ok(_) if line.trim_end() == wanted => return before,
                Ok(_) => before.push(line.trim_end().to_string()),
                Err(e) => panic!("reading notifications: {e}"),
            }
        }
    }

    fn send(&mut self, command: Command) {
        writeln!(self.commands, "{}", command.to_line()).unwrap();
    }

    /// The turn, the open and the start, up to `READY=1`.
    fn until_ready(&mut self) {
        self.expect("PREPARED=1");
        self.send(Command::Acquire);
        self.answer.take().unwrap().send(Ok(())).unwrap();
        self.expect("READY=1");
    }

    fn journal(&self) -> Vec<String> {
        self.journal.lock().unwrap().clone()
    }
}

fn settings(dir: &Path) -> Settings {
    Settings {
        runtime_dir: Some(dir.join("run")),
        data_dir: Some(dir.join("data")),
        grace_period_seconds: Some(5),
        ..Settings::default()
    }
    .resolve()
}

/// A supervised daemon named `test` with a recording tenant and data plane.
fn harness() -> (Harness, Daemon, Recorder, Plane) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let daemon = Daemon::new(
        "test",
        settings.clone(),
        InheritedFds::default(),
        Notifier::Supervisor(Mutex::new(theirs)),
    );
    let journal = Journal::default();
    let tenant = Recorder {
        tree: settings.daemon_tree("test"),
        journal: journal.clone(),
        fail_close: false,
        hang_open: false,
    };
    let (answer, answering) = oneshot::channel();
    let (fail, failure) = oneshot::channel();
    let plane = Plane {
        journal: journal.clone(),
        answering: Some(answering),
        failure: Some(failure),
    };
    ours.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    let harness = Harness {
        dir,
        journal,
        lines: BufReader::new(ours.try_clone().unwrap()),
        commands: ours,
        answer: Some(answer),
        fail: Some(fail),
    };
    (harness, daemon, tenant, plane)
}

/// Runs the driver on its own thread and runtime, as a daemon's main does.
fn drive(
    mut daemon: Daemon,
    mut tenant: Recorder,
    mut plane: Plane,
) -> (Shutdown, std::thread::JoinHandle<Result<(), RunError>>) {
    let shutdown = daemon.shutdown.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(&mut daemon, &mut tenant, &mut plane))
    });
    (shutdown, thread)
}

/// `DaemonControl.Status` over the daemon's socket.
fn status(socket: &Path) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = crate::rpc::connect(socket).await.unwrap();
        let reply = DaemonControlClient::new(channel)
            .status(DaemonStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.name, "test");
        assert!(reply.listeners.contains(&"tcp://127.0.0.1:1".to_string()));
        reply.state
    })
}

#[test]
fn a_release_and_a_resume_move_the_tree_while_the_data_plane_serves_on() {
    let (mut h, daemon, tenant, plane) = harness();
    let (shutdown, thread) = drive(daemon, tenant, plane);
    h.expect("PREPARED=1");
    h.send(Command::Acquire);
    // A command sent before READY=1 waits for it, and READY=1 waits for the data plane.
    h.send(Command::Release);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(h.journal(), ["open", "start"]);
    h.answer.take().unwrap().send(Ok(())).unwrap();
    let before = h.expect("READY=1");
    // Each phase reported before the line it goes with.
    assert_eq!(before, ["PHASE=opening", "PHASE=serving", "STATUS=0 keys"]);
    let before = h.expect("RELEASED=1");
    assert_eq!(before, ["PHASE=releasing", "PHASE=released"]);
    assert_eq!(h.journal(), ["open", "start", "ending", "close"]);

    h.send(Command::Release);
    h.send(Command::Resume);
    let before = h.expect("READY=1");
    assert_eq!(
        before,
        [
            "PHASE=resuming",
            "PHASE=opening",
            "PHASE=serving",
            "STATUS=0 keys"
        ]
    );
    assert_eq!(status(&h.socket()), "ready");
    assert_eq!(
        h.journal(),
        ["open", "start", "ending", "close", "open"],
        "the data plane starts once; a RELEASE while released is ignored"
    );

    shutdown.request(ShutdownKind::Graceful);
    assert_eq!(h.expect("STOPPING=1"), ["PHASE=stopping graceful"]);
    assert_eq!(h.expect("PHASE=stopped"), ["PHASE=drained"]);
    thread.join().unwrap().unwrap();
    assert_eq!(
        h.journal(),
        [
            "open",
            "start",
            "ending",
            "close",
            "open",
            "stop Graceful",
            "ending",
            "close"
        ]
    );
}

#[test]
fn a_failed_release_stops_gracefully_with_the_error() {
    let (mut h, daemon, mut tenant, plane) = harness();
    tenant.fail_close = true;
    let (_shutdown, thread) = drive(daemon, tenant, plane);
    h.until_ready();
    h.send(Command::Release);
    let before = h.expect("STOPPING=1");
    assert!(!before.contains(&"RELEASED=1".to_string()), "{before:?}");
    let err = thread.join().unwrap().unwrap_err();
    assert!(matches!(err, RunError::Release(_)), "{err}");
    assert_eq!(
        h.journal(),
        ["open", "start", "ending", "close", "stop Graceful"]
    );
}

#[test]
fn a_data_plane_failure_stops_fast_and_closes_the_tree() {
    let (mut h, daemon, tenant, plane) = harness();
    let (_shutdown, thread) = drive(daemon, tenant, plane);
    h.until_ready();
    h.fail.take().unwrap().send("socket gone".into()).unwrap();
    h.expect("STOPPING=1");
    let err = thread.join().unwrap().unwrap_err();
    assert!(matches!(err, RunError::DataPlane(_)), "{err}");
    assert_eq!(
        h.journal(),
        ["open", "start", "stop Fast", "ending", "close"]
    );
}

#[test]
fn a_data_plane_that_never_answers_sends_no_ready() {
    let (mut h, daemon, tenant, plane) = harness();
    let (_shutdown, thread) = drive(daemon, tenant, plane);
    h.expect("PREPARED=1");
    h.send(Command::Acquire);
    h.answer
        .take()
        .unwrap()
        .send(Err("no answer on 127.0.0.1:1".into()))
        .unwrap();
    let before = h.expect("STOPPING=1");
    assert!(!before.contains(&"READY=1".to_string()), "{before:?}");
    let err = thread.join().unwrap().unwrap_err();
    assert!(matches!(err, RunError::Start(_)), "{err}");
}

#[test]
fn a_stop_before_the_tree_is_open_serves_nothing() {
    // Before the turn.
    let (mut h, daemon, tenant, plane) = harness();
    let (shutdown, thread) = drive(daemon, tenant, plane);
    h.expect("PREPARED=1");
    shutdown.request(ShutdownKind::Graceful);
    thread.join().unwrap().unwrap();
    assert!(h.journal().is_empty());

    // While opening.
    let (mut h, daemon, mut tenant, plane) = harness();
    tenant.hang_open = true;
    let (shutdown, thread) = drive(daemon, tenant, plane);
    h.expect("PREPARED=1");
    h.send(Command::Acquire);
    while h.journal().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    shutdown.request(ShutdownKind::Graceful);
    thread.join().unwrap().unwrap();
    assert_eq!(h.journal(), ["open"]);
}

#[test]
fn the_supervisor_going_away_drains() {
    let (mut h, daemon, tenant, plane) = harness();
    let (_shutdown, thread) = drive(daemon, tenant, plane);
    h.until_ready();
    h.commands.shutdown(std::net::Shutdown::Both).unwrap();
    thread.join().unwrap().unwrap();
    assert_eq!(
        h.journal(),
        ["open", "start", "stop Graceful", "ending", "close"]
    );
}
