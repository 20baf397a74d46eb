//! dnsd through the supervisor: real packets over UDP and TCP.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use securely_tests::{Stack, dns};

#[test]
fn names_under_the_tld_answer_at_any_depth_over_udp_and_tcp() {
    let stack = Stack::start();
    for ask in [dns::udp, dns::tcp] {
        for name in ["app.test.", "deep.a.app.test.", "ApP.TeSt."] {
            let a = ask(stack.dns, name, RecordType::A);
            assert_eq!(a.metadata.response_code, ResponseCode::NoError);
            assert!(a.metadata.authoritative);
            assert_eq!(dns::answers(&a), ["127.0.0.1"], "{name}");
            assert_eq!(
                a.queries[0].name().to_string(),
                name,
                "question echoed as sent"
            );
            let aaaa = ask(stack.dns, name, RecordType::AAAA);
            assert_eq!(dns::answers(&aaaa), ["::1"], "{name}");
        }
        let mx = ask(stack.dns, "app.test.", RecordType::MX);
        assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
        assert!(mx.answers.is_empty());
        assert_eq!(mx.authorities.len(), 1);
        assert_eq!(mx.authorities[0].record_type(), RecordType::SOA);
        let soa = ask(stack.dns, "test.", RecordType::SOA);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = ask(stack.dns, "test.", RecordType::NS);
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
    }
}

#[test]
fn explicit_records_override_and_names_outside_are_refused() {
    let stack = Stack::start();
    stack.ctl_ok(&["dns:set", "api.test", "A", "10.1.2.3"]);
    stack.ctl_ok(&["dns:set", "api.test", "TXT", "hello world"]);
    let a = dns::udp(stack.dns, "api.test.", RecordType::A);
    assert_eq!(dns::answers(&a), ["10.1.2.3"]);
    let txt = dns::tcp(stack.dns, "api.test.", RecordType::TXT);
    assert!(
        dns::answers(&txt)[0].contains("hello world"),
        "{:?}",
        dns::answers(&txt)
    );
    let list = stack.ctl_ok(&["dns:list"]);
    assert!(
        list.contains("api.test") && list.contains("10.1.2.3"),
        "{list}"
    );
    // Other names keep the synthesised answer.
    assert_eq!(
        dns::answers(&dns::udp(stack.dns, "web.test.", RecordType::A)),
        ["127.0.0.1"]
    );
    // Unset restores it.
    stack.ctl_ok(&["dns:unset", "api.test"]);
    assert_eq!(
        dns::answers(&dns::udp(stack.dns, "api.test.", RecordType::A)),
        ["127.0.0.1"]
    );

    let outside = dns::udp(stack.dns, "example.com.", RecordType::A);
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);

    let bad = stack.ctl(&["dns:set", "api.example.com", "A", "10.0.0.1"]);
    assert!(!bad.status.success());
    let bad = stack.ctl(&["dns:set", "api.test", "A", "not-an-ip"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid argument"));
}
