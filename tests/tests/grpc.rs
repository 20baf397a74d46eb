//! Every socket speaks standard gRPC (health, reflection) and guards mutating calls by
//! the caller's credentials.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use securely_tests::{Stack, StackConfig, bin};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The services each socket must list through reflection.
const EXPECTED: [(&str, &str); 4] = [
    ("control", "securely.supervisor.v1.Supervisor"),
    ("proxyd", "securely.proxy.v1.ProxyAdmin"),
    ("dnsd", "securely.dns.v1.DnsAdmin"),
    ("queued", "securely.queue.v1.Queue"),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_socket_serves_health_and_reflection() {
    let stack = Stack::start();
    for (socket, service) in EXPECTED {
        let channel = stack.channel(socket).await;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{socket}: health: {e}"))
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32, "{socket}");

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap_or_else(|e| panic!("{socket}: reflection: {e}"))
            .into_inner();
        let reply = replies.message().await.unwrap().expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{socket}: unexpected reflection reply");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&service), "{socket}: {names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health"),
            "{socket}: {names:?}"
        );
        if socket != "control" {
            assert!(
                names.contains(&"securely.daemon.v1.DaemonControl"),
                "{socket}: {names:?}"
            );
        }
    }
}

#[test]
fn mutating_calls_need_root_or_the_securely_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let stack = Stack::start();
    let nobody = 65534;
    // Let another user reach the sockets at all, so the credential check is what decides.
    for path in [
        stack.control_socket(),
        stack.socket("queued"),
        stack.socket("dnsd"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    std::fs::set_permissions(stack.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(bin("securelyctl"))
            .arg("--socket")
            .arg(stack.control_socket())
            .args(args)
            .uid(nobody)
            .gid(nobody)
            .output()
            .unwrap()
    };
    // Reading is open to whoever reaches the socket.
    let status = as_nobody(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Changing is not.
    for args in [
        &["restart", "dnsd"][..],
        &["stop"][..],
        &["queue:push", "q", "x"][..],
        &["dns:set", "a.test", "A", "10.0.0.1"][..],
    ] {
        let out = as_nobody(args);
        assert!(!out.status.success(), "{args:?} succeeded as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("permission denied: uid 65534"),
            "{args:?}: {err}"
        );
    }
    // Root still may.
    stack.ctl_ok(&["queue:push", "q", "x"]);
}

#[test]
fn members_of_the_securely_group_may_change_the_stack_without_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    // Runs as root with group nogroup: the sockets are group-accessible (0660, the runtime
    // dir 0750, both nogroup's), and nogroup's members may change the stack.
    let stack = Stack::start_with(StackConfig {
        extra_yaml: "grace_period_seconds: 5\nuser: root\ngroup: nogroup\n".into(),
        ..StackConfig::default()
    });
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("the nogroup group")
        .gid
        .as_raw();
    let out = Command::new(bin("securelyctl"))
        .arg("--socket")
        .arg(stack.control_socket())
        .args(["queue:push", "q", "from-the-group"])
        .uid(65534)
        .gid(nogroup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = stack.ctl_ok(&["queue:stats"]);
    assert!(stats.contains('q'), "{stats}");
}
