//! Names outside the TLD: refused without upstreams, forwarded with them, SERVFAIL
//! quickly when the upstreams are dead.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Well above the forwarder's 2 s deadline, well below a client's patience.
const SERVFAIL_WITHIN: Duration = Duration::from_secs(4);

#[test]
fn without_upstreams_outside_names_are_refused() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for (transport, reply) in both(dnsd.addr, &query("example.com.", RecordType::A)) {
        assert_eq!(rcode(&reply), ResponseCode::Refused, "{transport}");
        assert!(!reply.metadata.recursion_available, "{transport}");
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn answers_come_back_from_the_upstream() {
    let upstream = FakeUpstream::start();
    let dnsd = Dnsd::start(DnsConfig {
        upstreams: vec![upstream.addr.to_string()],
        ..DnsConfig::default()
    });
    for (transport, reply) in both(dnsd.addr, &query("Example.COM.", RecordType::A)) {
        assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport}");
        assert!(reply.metadata.recursion_available, "{transport}: RA");
        assert!(!reply.metadata.authoritative, "{transport}: not ours");
        assert_eq!(answers(&reply), vec!["192.0.2.10"], "{transport}");
        assert_eq!(
            reply.answers[0].name.to_ascii(),
            "Example.COM.",
            "{transport}"
        );
    }
    for (transport, reply) in both(dnsd.addr, &query("missing.example.", RecordType::A)) {
        assert_eq!(rcode(&reply), ResponseCode::NXDomain, "{transport}");
        assert_eq!(
            reply.authorities.len(),
            1,
            "{transport}: the upstream's SOA"
        );
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(reply.authorities[0].name.to_ascii(), "example.");
    }
    // The local TLD is still answered locally, with RA now set.
    let local = udp(dnsd.addr, &query("app.test.", RecordType::A));
    assert_eq!(answers(&local), vec!["127.0.0.1"]);
    assert!(local.metadata.recursion_available);
}

#[test]
fn a_dead_upstream_gives_servfail_quickly_without_stalling_others() {
    let dead = dead_upstream();
    let dnsd = Dnsd::start(DnsConfig {
        upstreams: vec![dead.local_addr().unwrap().to_string()],
        ..DnsConfig::default()
    });
    let addr = dnsd.addr;
    let forwarded: Vec<_> = ["udp", "tcp"]
        .into_iter()
        .map(|transport| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let asked = query("example.com.", RecordType::A);
                let reply = if transport == "udp" {
                    udp(addr, &asked)
                } else {
                    tcp(addr, &asked)
                };
                (transport, reply, started.elapsed())
            })
        })
        .collect();
    // Meanwhile, local names answer at once.
    let started = Instant::now();
    let local = tcp(addr, &query("app.test.", RecordType::A));
    assert_eq!(answers(&local), vec!["127.0.0.1"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "local answers do not wait"
    );

    for thread in forwarded {
        let (transport, reply, took) = thread.join().unwrap();
        assert_eq!(rcode(&reply), ResponseCode::ServFail, "{transport}");
        assert!(
            took < SERVFAIL_WITHIN,
            "{transport}: SERVFAIL after {took:?}"
        );
    }
}

#[test]
fn a_dead_upstream_fails_over_to_a_live_one() {
    let dead = dead_upstream();
    let upstream = FakeUpstream::start();
    let dnsd = Dnsd::start(DnsConfig {
        upstreams: vec![
            dead.local_addr().unwrap().to_string(),
            upstream.addr.to_string(),
        ],
        ..DnsConfig::default()
    });
    let started = Instant::now();
    let reply = udp(dnsd.addr, &query("example.com.", RecordType::A));
    assert_eq!(rcode(&reply), ResponseCode::NoError);
    assert_eq!(answers(&reply), vec!["192.0.2.10"]);
    assert!(started.elapsed() < SERVFAIL_WITHIN);
}
