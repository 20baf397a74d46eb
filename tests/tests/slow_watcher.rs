//! A watcher that stops reading holds nothing up: its HTTP/2 stream is opened with a tiny
//! flow-control window and never polled, so the supervisor's sending to it stalls at
//! once, and restarts still complete in their normal time. When it reads at last, it is
//! told how many events it missed, at the exact place it missed them.

use std::time::{Duration, Instant};

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{Event, WatchRequest};
use securely_tests::Stack;
use tonic::transport::{Channel, Endpoint};

/// The bound on one restart: the hang bound the other restart tests use, not a speed goal.
const RESTART_BOUND: Duration = Duration::from_secs(20);
/// The stalled watcher's HTTP/2 stream window: a few events fill it.
const TINY_WINDOW: u32 = 256;
/// Events published past the stalled watcher, comfortably more than the supervisor keeps
/// for it (256, plus what its connection buffers).
const PAST_THE_BACKLOG: u64 = 400;
/// The events the supervisor keeps for a watcher that has not read them (`BACKLOG` in
/// supervisor/src/events.rs).
const BACKLOG: u64 = 256;
/// A bound on reading one event, once the watcher reads.
const READ_BOUND: Duration = Duration::from_secs(20);

async fn channel(stack: &Stack, window: Option<u32>) -> Channel {
    let uri = format!("unix://{}", stack.control_socket().display());
    Endpoint::from_shared(uri)
        .expect("endpoint")
        .initial_stream_window_size(window)
        .connect()
        .await
        .expect("connect to control.sock")
}

/// The number of the supervisor's last event (a new watcher's initial state carries it).
async fn last_seq(stack: &Stack) -> u64 {
    let mut client = SupervisorClient::new(channel(stack, None).await);
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("no error").expect("a state");
    first.seq
}

async fn next(stream: &mut tonic::Streaming<Event>) -> Event {
    tokio::time::timeout(READ_BOUND, stream.message())
        .await
        .expect("an event within the bound")
        .expect("no error")
        .expect("not the end")
}

#[test]
fn a_stalled_watcher_slows_no_restart_and_is_told_what_it_missed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = Stack::start();
    stack.wait_all_ready();
    let restart = |daemon: &str| {
        let began = Instant::now();
        stack.ctl_ok(&["restart", daemon, "--quiet"]);
        began.elapsed()
    };
    // For the record: restarts with nobody watching.
    let alone: Vec<Duration> = ["proxyd", "dnsd", "queued"].map(restart).into();

    // Opened, then never polled until the end: its window fills with the first events.
    let mut stalled = runtime.block_on(async {
        SupervisorClient::new(channel(&stack, Some(TINY_WINDOW)).await)
            .watch(WatchRequest::default())
            .await
            .expect("watch")
            .into_inner()
    });
    let from = runtime.block_on(last_seq(&stack));

    let mut restarts = 0;
    let mut slowest = Duration::ZERO;
    let mut last = from;
    while last < from + PAST_THE_BACKLOG {
        let daemon = ["proxyd", "dnsd", "queued"][restarts % 3];
        let took = restart(daemon);
        assert!(
            took < RESTART_BOUND,
            "restart {restarts} of {daemon} took {took:?}"
        );
        slowest = slowest.max(took);
        restarts += 1;
        last = runtime.block_on(last_seq(&stack));
    }
    eprintln!(
        "{restarts} restarts past the stalled watcher, the slowest in {slowest:?} \
         (unwatched: {alone:?})"
    );

    // Reading at last: what fitted before it stalled, then the lag, then the rest.
    runtime.block_on(async {
        let mut seen = Vec::new();
        let lagged = loop {
            let event = next(&mut stalled).await;
            if event.kind == "lagged" {
                break event;
            }
            seen.push(event);
        };
        let before = seen.last().expect("the initial state at least");
        assert!(lagged.missed > 0, "{lagged:?}");
        assert_eq!(
            before.seq + lagged.missed,
            lagged.seq,
            "{before:?} {lagged:?}"
        );
        // Then every event after the lag, in order, up to the last one: no more than
        // the supervisor keeps for a watcher (the rest was dropped, not queued for it).
        let mut seq = lagged.seq;
        while seq < last {
            let event = next(&mut stalled).await;
            assert_eq!(event.seq, seq + 1, "{event:?}");
            seq = event.seq;
        }
        assert!(last - lagged.seq <= BACKLOG, "{lagged:?}, last {last}");
    });
}
