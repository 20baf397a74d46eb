//! Bad input of every kind gets an error, and every daemon keeps serving.

use std::io::Write;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use securely_proto::dns::SetRecordRequest;
use securely_proto::dns::dns_admin_client::DnsAdminClient;
use securely_proto::proxy::LinkSiteRequest;
use securely_proto::proxy::proxy_admin_client::ProxyAdminClient;
use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{PushRequest, ReserveRequest, SelectFailed};
use securely_proto::supervisor::RestartRequest;
use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_tests::{Stack, dns, http};
use tonic::Code;

fn pids(stack: &Stack) -> Vec<u32> {
    ["proxyd", "dnsd", "queued"]
        .iter()
        .map(|d| stack.ready_pid(d).expect("ready"))
        .collect()
}

#[test]
fn malformed_dns_packets_do_not_stop_dnsd() {
    let stack = Stack::start();
    let before = pids(&stack);
    let valid = dns::query("app.test.", RecordType::A).to_vec().unwrap();
    let mut zero_questions = valid.clone();
    zero_questions[4] = 0;
    zero_questions[5] = 0;
    let mut two_questions = valid.clone();
    two_questions[5] = 2;
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0xff; 11],
        (0..512u32).map(|i| (i * 7919 % 251) as u8).collect(),
        valid[..valid.len() - 3].to_vec(),
        zero_questions,
        two_questions,
    ];
    for packet in &garbage {
        if let Some(reply) = dns::udp_raw(stack.dns, packet, Duration::from_millis(300))
            && let Ok(reply) = Message::from_vec(&reply)
        {
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::FormErr,
                "{packet:?}"
            );
        }
        // Over TCP too: a bad frame must not stall the server.
        if let Ok(mut stream) = std::net::TcpStream::connect(stack.dns) {
            let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(packet);
            let _ = stream.write_all(&framed);
        }
    }
    assert_eq!(
        dns::answers(&dns::udp(stack.dns, "app.test.", RecordType::A)),
        ["127.0.0.1"]
    );
    assert_eq!(
        dns::answers(&dns::tcp(stack.dns, "app.test.", RecordType::A)),
        ["127.0.0.1"]
    );
    assert_eq!(pids(&stack), before, "no daemon restarted");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_every_grpc_socket_and_the_http_port_is_survived() {
    let stack = Stack::start();
    let before = pids(&stack);
    for name in ["control", "proxyd", "dnsd", "queued"] {
        let path = if name == "control" {
            stack.control_socket()
        } else {
            stack.socket(name)
        };
        for junk in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0u8; 64][..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff",
        ] {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let _ = s.write_all(junk);
        }
    }
    for junk in [
        &b"\x16\x03\x01\x00\xff garbage"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        &[0u8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(stack.http).unwrap();
        let _ = s.write_all(junk);
    }
    stack.ctl_ok(&["status"]);
    let reply = http::get(stack.http, "none.test", "/").await.unwrap();
    assert_eq!(reply.status, 404);
    stack.ctl_ok(&["dns:list"]);
    stack.ctl_ok(&["queue:stats"]);
    assert_eq!(pids(&stack), before, "no daemon restarted");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_rpc_arguments_get_invalid_argument() {
    let stack = Stack::start();
    let before = pids(&stack);

    let mut proxy = ProxyAdminClient::new(stack.channel("proxyd").await);
    for (name, target) in [
        ("", "127.0.0.1:80"),
        ("bad name!", "127.0.0.1:80"),
        ("ok", "nope"),
        ("ok", "127.0.0.1:0"),
        ("ok", "127.0.0.1:99999"),
    ] {
        let err = proxy
            .link_site(LinkSiteRequest {
                name: name.into(),
                target: target.into(),
                hostnames: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{name} {target}: {err:?}"
        );
    }

    let mut dnsd = DnsAdminClient::new(stack.channel("dnsd").await);
    for (name, rtype, value) in [
        ("x.test", "MX?", "a"),
        ("x.test", "AAAA", "1.2.3.4"),
        ("", "A", "1.2.3.4"),
        ("outside.org", "A", "1.2.3.4"),
    ] {
        let err = dnsd
            .set_record(SetRecordRequest {
                name: name.into(),
                r#type: rtype.into(),
                value: value.into(),
                ttl: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{name} {rtype} {value}: {err:?}"
        );
    }

    let mut queue = QueueClient::new(stack.channel("queued").await);
    for queue_name in ["", "has space", &"q".repeat(500)] {
        let err = queue
            .push(PushRequest {
                queue: queue_name.into(),
                payload: b"x".to_vec(),
                delay_seconds: 0,
                max_tries: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{queue_name:?}: {err:?}");
    }
    let err = queue
        .reserve(ReserveRequest {
            queue: "q".into(),
            timeout_seconds: u64::MAX,
            wait_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    for selection in [
        SelectFailed {
            ids: vec![],
            all: false,
            queue: String::new(),
        },
        SelectFailed {
            ids: vec![1],
            all: true,
            queue: String::new(),
        },
        SelectFailed {
            ids: vec![0],
            all: false,
            queue: String::new(),
        },
        SelectFailed {
            ids: vec![],
            all: true,
            queue: "bad queue".into(),
        },
    ] {
        let err = queue.forget_failed(selection.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{selection:?}: {err:?}");
    }

    let mut control = SupervisorClient::new(stack.channel("control").await);
    let err = control
        .restart(RestartRequest {
            daemon: "../../bin/sh".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Bad CLI arguments: one clear line and a non-zero exit.
    let out = stack.ctl(&["queue:ack", "not-a-number"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));

    assert_eq!(pids(&stack), before, "no daemon restarted");
}
