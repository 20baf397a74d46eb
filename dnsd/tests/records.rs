//! Explicit records set over gRPC: they override the synthesis live, survive restarts,
//! and bad arguments are refused without harm.

mod common;

use std::sync::Arc;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn explicit_records_override_the_synthesis_until_unset() {
    let dnsd = Dnsd::start(DnsConfig::default());
    let set = dnsd
        .set_record("API.test.", "a", "10.0.0.1", 0)
        .expect("SetRecord");
    assert_eq!(
        (
            set.name.as_str(),
            set.r#type.as_str(),
            set.value.as_str(),
            set.ttl
        ),
        ("api.test", "A", "10.0.0.1", 60),
        "canonical form, default TTL"
    );
    dnsd.set_record("api.test", "A", "10.0.0.2", 30)
        .expect("SetRecord");
    dnsd.set_record("api.test", "TXT", "v=spf1 -all", 0)
        .expect("SetRecord");
    for (transport, reply) in both(dnsd.addr, &query("Api.Test.", RecordType::A)) {
        assert_eq!(answers(&reply), vec!["10.0.0.1", "10.0.0.2"], "{transport}");
        assert!(reply.metadata.authoritative);
        let ttls: Vec<u32> = reply.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![60, 30], "{transport}");
    }
    // The explicit set defines the name: no synthesised AAAA next to it.
    let aaaa = udp(dnsd.addr, &query("api.test.", RecordType::AAAA));
    assert_eq!(rcode(&aaaa), ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);
    let txt = tcp(dnsd.addr, &query("api.test.", RecordType::TXT));
    assert_eq!(answers(&txt), vec!["v=spf1 -all"]);

    assert_eq!(dnsd.list_records().len(), 3);
    assert_eq!(dnsd.unset_record("api.test", "A").expect("UnsetRecord"), 2);
    let txt_only = udp(dnsd.addr, &query("api.test.", RecordType::A));
    assert!(
        txt_only.answers.is_empty(),
        "TXT alone still defines the name"
    );
    assert_eq!(dnsd.unset_record("api.test.", "").expect("UnsetRecord"), 1);
    for (transport, reply) in both(dnsd.addr, &query("api.test.", RecordType::A)) {
        assert_eq!(
            answers(&reply),
            vec!["127.0.0.1"],
            "{transport}: synthesis restored"
        );
    }
    assert!(dnsd.list_records().is_empty());
}

#[test]
fn a_cname_to_a_local_name_brings_the_targets_records() {
    let dnsd = Dnsd::start(DnsConfig::default());
    dnsd.set_record("web.test", "A", "10.1.1.1", 0)
        .expect("SetRecord");
    dnsd.set_record("www.test", "CNAME", "web.test", 0)
        .expect("SetRecord");
    dnsd.set_record("plain.test", "CNAME", "somewhere.test", 0)
        .expect("SetRecord");
    for (transport, reply) in both(dnsd.addr, &query("www.test.", RecordType::A)) {
        assert_eq!(
            answers(&reply),
            vec!["web.test.", "10.1.1.1"],
            "{transport}"
        );
        assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
    }
    let synthesised = udp(dnsd.addr, &query("plain.test.", RecordType::AAAA));
    assert_eq!(answers(&synthesised), vec!["somewhere.test.", "::1"]);
    let conflict = dnsd.set_record("www.test", "A", "10.0.0.1", 0).unwrap_err();
    assert_eq!(
        conflict.code(),
        tonic::Code::FailedPrecondition,
        "{conflict:?}"
    );
}

#[test]
fn records_survive_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut first = Dnsd::start_in(dir.clone(), DnsConfig::default());
    first
        .set_record("kept.test", "A", "10.2.2.2", 0)
        .expect("SetRecord");
    first
        .set_record("kept.test", "TXT", "still here", 120)
        .expect("SetRecord");
    let (status, _) = first.terminate();
    assert!(status.success(), "{status}\n{}", first.log());
    drop(first);

    let second = Dnsd::start_in(dir, DnsConfig::default());
    let a = udp(second.addr, &query("kept.test.", RecordType::A));
    assert_eq!(answers(&a), vec!["10.2.2.2"]);
    let txt = tcp(second.addr, &query("kept.test.", RecordType::TXT));
    assert_eq!(answers(&txt), vec!["still here"]);
    assert_eq!(txt.answers[0].ttl, 120);
    assert_eq!(second.list_records().len(), 2);
}

#[test]
fn invalid_arguments_are_refused_and_serving_goes_on() {
    let dnsd = Dnsd::start(DnsConfig::default());
    assert_invalid(dnsd.set_record("api.example", "A", "10.0.0.1", 0), "name");
    assert_invalid(dnsd.set_record("", "A", "10.0.0.1", 0), "name");
    assert_invalid(dnsd.set_record("bad name.test", "A", "10.0.0.1", 0), "name");
    assert_invalid(dnsd.set_record("api.test", "MX", "10 mx.test", 0), "type");
    assert_invalid(dnsd.set_record("api.test", "A", "::1", 0), "value");
    assert_invalid(dnsd.set_record("api.test", "AAAA", "10.0.0.1", 0), "value");
    assert_invalid(
        dnsd.set_record("api.test", "CNAME", "not valid", 0),
        "value",
    );
    assert_invalid(
        dnsd.set_record("api.test", "TXT", &"x".repeat(5000), 0),
        "value",
    );
    assert_invalid(
        dnsd.set_record("api.test", "A", "10.0.0.1", u32::MAX),
        "ttl",
    );
    assert_invalid(dnsd.set_record("test", "CNAME", "web.test", 0), "name");
    assert_invalid(dnsd.unset_record("elsewhere.org", ""), "name");
    assert_invalid(dnsd.unset_record("api.test", "SRV"), "type");
    assert!(dnsd.list_records().is_empty(), "nothing was stored");
    let reply = udp(dnsd.addr, &query("api.test.", RecordType::A));
    assert_eq!(answers(&reply), vec!["127.0.0.1"]);
}
