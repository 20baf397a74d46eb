//! proxyd through the supervisor: sites linked with securelyctl, real HTTP.

use securely_tests::{Stack, http};

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_site_reaches_its_backend_with_forwarded_headers() {
    let stack = Stack::start();
    let backend = http::Backend::start().await;
    let out = stack.ctl_ok(&["site:link", "myapp", &backend.addr.to_string()]);
    assert!(out.contains("myapp.test"), "{out}");

    let reply = http::get(stack.http, "myapp.test", "/hello?x=1")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.body.to_lowercase();
    assert!(body.contains("path: /hello?x=1"), "{body}");
    assert!(body.contains("host: myapp.test"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(body.contains("x-forwarded-host: myapp.test"), "{body}");

    // Listed, in both forms.
    let list = stack.ctl_ok(&["site:list"]);
    assert!(
        list.contains("myapp") && list.contains(&backend.addr.to_string()),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "myapp");

    // Unlinked: gone at once.
    stack.ctl_ok(&["site:unlink", "myapp"]);
    let reply = http::get(stack.http, "myapp.test", "/").await.unwrap();
    assert_eq!(reply.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_is_404_naming_it_and_a_dead_backend_is_502() {
    let stack = Stack::start();
    let reply = http::get(stack.http, "nothing-here.test", "/")
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("nothing-here.test"), "{}", reply.body);

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    stack.ctl_ok(&["site:link", "down", &dead.to_string()]);
    let reply = http::get(stack.http, "down.test", "/").await.unwrap();
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("down"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn sites_survive_a_daemon_restart() {
    let stack = Stack::start();
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "keep", &backend.addr.to_string()]);
    stack.ctl_ok(&["restart", "proxyd"]);
    let reply = http::get(stack.http, "keep.test", "/").await.unwrap();
    assert_eq!(reply.status, 200);
}
