//! The local TLD as clients see it, over UDP and TCP.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

#[test]
fn names_at_any_depth_resolve_to_the_configured_addresses() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for name in ["app.test.", "a.b.c.test."] {
        for (transport, reply) in both(dnsd.addr, &query(name, RecordType::A)) {
            assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport} {name}");
            assert!(reply.metadata.authoritative, "{transport} {name}: AA");
            assert!(!reply.metadata.recursion_available, "no upstreams: no RA");
            assert_eq!(answers(&reply), vec!["127.0.0.1"], "{transport} {name}");
            assert_eq!(reply.answers[0].ttl, 60);
        }
        for (transport, reply) in both(dnsd.addr, &query(name, RecordType::AAAA)) {
            assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport} {name}");
            assert_eq!(answers(&reply), vec!["::1"], "{transport} {name}");
        }
    }
}

#[test]
fn a_family_without_addresses_is_nodata() {
    let dnsd = Dnsd::start(DnsConfig {
        addresses: Some(vec!["10.9.8.7".into()]),
        ..DnsConfig::default()
    });
    let a = udp(dnsd.addr, &query("x.test.", RecordType::A));
    assert_eq!(answers(&a), vec!["10.9.8.7"]);
    for (transport, reply) in both(dnsd.addr, &query("x.test.", RecordType::AAAA)) {
        assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport}");
        assert!(reply.answers.is_empty(), "{transport}");
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
    }
}

#[test]
fn other_types_are_nodata_with_the_soa_never_nxdomain() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for (transport, reply) in both(dnsd.addr, &query("mail.deep.test.", RecordType::MX)) {
        assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport}");
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty(), "{transport}");
        assert_eq!(reply.authorities.len(), 1, "{transport}");
        let soa = &reply.authorities[0];
        assert_eq!(soa.name.to_ascii(), "test.");
        let RData::SOA(data) = &soa.data else {
            panic!("{transport}: authority is not a SOA")
        };
        // dns.ttl is 60: the SOA's MINIMUM, and the negative answer's TTL, which is
        // min(SOA TTL, MINIMUM) (RFC 2308 section 5).
        assert_eq!(data.minimum, 60, "{transport}: SOA MINIMUM");
        assert_eq!(soa.ttl, 60, "{transport}: negative TTL");
        assert_eq!(data.mname.to_ascii(), "ns.test.", "{transport}");
    }
}

#[test]
fn the_apex_answers_soa_and_ns() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for (transport, reply) in both(dnsd.addr, &query("test.", RecordType::SOA)) {
        assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport}");
        assert!(reply.metadata.authoritative);
        let RData::SOA(soa) = &reply.answers[0].data else {
            panic!("{transport}: not a SOA")
        };
        assert_eq!(soa.mname.to_ascii(), "ns.test.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.test.");
    }
    for (transport, reply) in both(dnsd.addr, &query("test.", RecordType::NS)) {
        assert_eq!(answers(&reply), vec!["ns.test."], "{transport}");
        let glue: Vec<String> = reply
            .additionals
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(glue, vec!["127.0.0.1", "::1"], "{transport}");
    }
    let ns = udp(dnsd.addr, &query("ns.test.", RecordType::A));
    assert_eq!(answers(&ns), vec!["127.0.0.1"]);
}

#[test]
fn the_question_is_echoed_byte_for_byte() {
    let dnsd = Dnsd::start(DnsConfig::default());
    let asked = query("WwW.ApP.TeSt.", RecordType::A);
    let bytes = asked.to_vec().unwrap();
    for reply in [
        udp_raw(dnsd.addr, &bytes, REPLY_TIMEOUT).expect("UDP reply"),
        tcp_raw(dnsd.addr, &bytes, REPLY_TIMEOUT).expect("TCP reply"),
    ] {
        // Header (12 bytes) then the question, exactly as sent.
        let question = &bytes[12..];
        assert_eq!(&reply[12..12 + question.len()], question);
        let parsed = hickory_proto::op::Message::from_vec(&reply).unwrap();
        assert_eq!(answers(&parsed), vec!["127.0.0.1"]);
        assert_eq!(parsed.answers[0].name.to_ascii(), "WwW.ApP.TeSt.");
    }
}

#[test]
fn localhost_is_answered_locally() {
    let dnsd = Dnsd::start(DnsConfig::default());
    let a = udp(dnsd.addr, &query("localhost.", RecordType::A));
    assert_eq!(rcode(&a), ResponseCode::NoError);
    assert_eq!(answers(&a), vec!["127.0.0.1"]);
    let aaaa = tcp(dnsd.addr, &query("app.localhost.", RecordType::AAAA));
    assert_eq!(answers(&aaaa), vec!["::1"]);
}

#[test]
fn any_gets_a_minimal_answer() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for (transport, reply) in both(dnsd.addr, &query("app.test.", RecordType::ANY)) {
        assert_eq!(rcode(&reply), ResponseCode::NoError, "{transport}");
        assert_eq!(answers(&reply), vec!["127.0.0.1"], "{transport}");
    }
}

#[test]
fn edns_is_answered_with_opt_version_0_and_1232_bytes() {
    let dnsd = Dnsd::start(DnsConfig::default());
    for (transport, reply) in both(
        dnsd.addr,
        &with_edns(query("e.test.", RecordType::A), 4096, 0),
    ) {
        let edns = reply.edns.as_ref().expect("an OPT record");
        assert_eq!(edns.version(), 0, "{transport}");
        assert_eq!(edns.max_payload(), 1232, "{transport}");
        assert_eq!(answers(&reply), vec!["127.0.0.1"]);
    }
    let plain = udp(dnsd.addr, &query("e.test.", RecordType::A));
    assert!(plain.edns.is_none(), "no OPT without OPT in the query");
    for (transport, reply) in both(
        dnsd.addr,
        &with_edns(query("e.test.", RecordType::A), 1232, 1),
    ) {
        // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
        assert_eq!(
            u16::from(rcode(&reply)),
            u16::from(ResponseCode::BADVERS),
            "{transport}"
        );
        assert_eq!(reply.edns.as_ref().map(|e| e.version()), Some(0));
        assert!(reply.answers.is_empty());
    }
}

#[test]
fn oversized_udp_answers_are_truncated_and_complete_over_tcp() {
    let dnsd = Dnsd::start(DnsConfig::default());
    let text = "t".repeat(1000);
    dnsd.set_record("big.test", "TXT", &text, 0)
        .expect("SetRecord");
    let plain = udp(dnsd.addr, &query("big.test.", RecordType::TXT));
    assert!(
        plain.metadata.truncation,
        "1000 bytes exceed 512 without EDNS"
    );
    assert!(plain.answers.is_empty());
    let small_opt = udp(
        dnsd.addr,
        &with_edns(query("big.test.", RecordType::TXT), 600, 0),
    );
    assert!(
        small_opt.metadata.truncation,
        "the client's 600 bytes bound the reply"
    );
    assert!(small_opt.edns.is_some(), "a truncated reply keeps its OPT");
    let edns = udp(
        dnsd.addr,
        &with_edns(query("big.test.", RecordType::TXT), 4096, 0),
    );
    assert!(!edns.metadata.truncation, "fits in 1232 bytes");
    assert_eq!(answers(&edns).concat().len(), 1000);
    let over_tcp = tcp(dnsd.addr, &query("big.test.", RecordType::TXT));
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(answers(&over_tcp).concat().len(), 1000);
}
