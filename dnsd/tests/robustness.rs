//! Bad packets and odd questions get a clear answer (or none) and never hurt service;
//! SIGTERM stops the daemon promptly with exit 0.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

/// How long to wait for a reply that should not come.
const SILENCE: Duration = Duration::from_millis(300);

fn assert_still_serving(dnsd: &Dnsd) {
    for (transport, reply) in both(dnsd.addr, &query("alive.test.", RecordType::A)) {
        assert_eq!(answers(&reply), vec!["127.0.0.1"], "{transport}");
    }
}

/// The daemon survived everything so far without a panic in any task (a panicking task
/// would not kill the process, only its log would tell).
fn assert_no_panic(dnsd: &Dnsd) {
    let log = dnsd.log();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
}

/// A FORMERR reply must have come.
fn formerr(reply: Option<Vec<u8>>, what: &str) {
    let bytes = reply.unwrap_or_else(|| panic!("{what}: no reply, FORMERR expected"));
    let message =
        Message::from_vec(&bytes).unwrap_or_else(|e| panic!("{what}: unparseable reply: {e}"));
    assert_eq!(rcode(&message), ResponseCode::FormErr, "{what}");
}

fn formerr_or_nothing(reply: Option<Vec<u8>>, what: &str) {
    if let Some(bytes) = reply {
        let message =
            Message::from_vec(&bytes).unwrap_or_else(|e| panic!("{what}: unparseable reply: {e}"));
        assert_eq!(rcode(&message), ResponseCode::FormErr, "{what}");
    }
}

#[test]
fn malformed_packets_get_formerr_or_silence() {
    let dnsd = Dnsd::start(DnsConfig::default());
    // A truncated header cannot be answered at all.
    assert_eq!(
        udp_raw(dnsd.addr, &[0x12, 0x34, 0x01, 0x00, 0x00], SILENCE),
        None
    );

    // A header that promises a question which is not there: the header parses, so
    // dnsd answers FORMERR.
    let mut promised = query("x.test.", RecordType::A).to_vec().unwrap();
    promised.truncate(12);
    formerr(
        udp_raw(dnsd.addr, &promised, REPLY_TIMEOUT),
        "missing question",
    );

    // A compression pointer that points at itself.
    let mut looped = promised.clone();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    formerr(udp_raw(dnsd.addr, &looped, REPLY_TIMEOUT), "pointer loop");

    // Zero questions is a well-formed message but not a query.
    let mut empty = query("x.test.", RecordType::A);
    empty.queries.clear();
    let reply = udp(dnsd.addr, &empty);
    assert_eq!(rcode(&reply), ResponseCode::FormErr);

    // Random bytes, whatever they parse as: never a crash.
    let mut seed: u64 = 0x5eed_cafe;
    for i in 0..200 {
        let len = 1 + (i * 7) % 120;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(&bytes, dnsd.addr).unwrap();
    }
    assert_still_serving(&dnsd);

    // Garbage over TCP: FORMERR or a closed connection, and new connections still work.
    formerr_or_nothing(
        tcp_raw(
            dnsd.addr,
            &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            REPLY_TIMEOUT,
        ),
        "TCP garbage",
    );
    assert_still_serving(&dnsd);
    assert_no_panic(&dnsd);
}

#[test]
fn a_stalled_tcp_client_does_not_block_anyone() {
    let dnsd = Dnsd::start(DnsConfig::default());
    let mut stalled = TcpStream::connect(dnsd.addr).unwrap();
    // Announce 500 bytes, send 3.
    stalled.write_all(&[0x01, 0xf4, 1, 2, 3]).unwrap();
    let idle = TcpStream::connect(dnsd.addr).unwrap();
    assert_still_serving(&dnsd);
    drop((stalled, idle));
    assert_no_panic(&dnsd);
}

#[test]
fn questions_dnsd_does_not_serve_get_clear_codes() {
    let dnsd = Dnsd::start(DnsConfig::default());

    let mut two = query("a.test.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("b.test.").unwrap(),
        RecordType::A,
    ));
    for (transport, reply) in both(dnsd.addr, &two) {
        assert_eq!(
            rcode(&reply),
            ResponseCode::FormErr,
            "{transport}: two questions"
        );
    }

    let mut chaos = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    chaos.set_query_class(DNSClass::CH);
    let mut chaos_query = Message::query();
    chaos_query.add_query(chaos);
    for (transport, reply) in both(dnsd.addr, &chaos_query) {
        assert_eq!(
            rcode(&reply),
            ResponseCode::Refused,
            "{transport}: class CH"
        );
    }

    let mut status = query("a.test.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    for (transport, reply) in both(dnsd.addr, &status) {
        assert_eq!(
            rcode(&reply),
            ResponseCode::NotImp,
            "{transport}: opcode STATUS"
        );
    }

    for (transport, reply) in both(dnsd.addr, &query("test.", RecordType::AXFR)) {
        assert_eq!(
            rcode(&reply),
            ResponseCode::Refused,
            "{transport}: zone transfer"
        );
    }
    assert_still_serving(&dnsd);
    assert_no_panic(&dnsd);
}

#[test]
fn sigterm_exits_zero_promptly_even_with_idle_clients() {
    let mut dnsd = Dnsd::start(DnsConfig::default());
    dnsd.set_record("x.test", "A", "10.0.0.1", 0)
        .expect("SetRecord");
    // Clients that hold connections open and say nothing.
    let idle_dns = TcpStream::connect(dnsd.addr).unwrap();
    let idle_grpc = UnixStream::connect(&dnsd.socket).unwrap();
    let (status, took) = dnsd.terminate();
    assert!(status.success(), "{status}\n{}", dnsd.log());
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}\n{}",
        dnsd.log()
    );
    assert!(dnsd.log().contains("draining DNS"), "{}", dnsd.log());
    drop((idle_dns, idle_grpc));
}

#[test]
fn sigint_exits_zero_at_once() {
    let mut dnsd = Dnsd::start(DnsConfig::default());
    let pid = nix::unistd::Pid::from_raw(dnsd.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let (status, took) = dnsd.wait_exit();
    assert!(status.success(), "{status}\n{}", dnsd.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn sigterm_while_another_instance_holds_the_tree_exits_zero() {
    let holder = Dnsd::start(DnsConfig::default());
    let mut waiting = Dnsd::launch(holder.dir.clone(), DnsConfig::default());
    waiting.wait_for_log("opening the record store");
    let (status, took) = waiting.terminate();
    assert!(status.success(), "{status}\n{}", waiting.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        waiting.log().contains("asked to stop while opening"),
        "{}",
        waiting.log()
    );
    assert_still_serving(&holder);
}
