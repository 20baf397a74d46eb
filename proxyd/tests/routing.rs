//! Routing and the admin API, against the real binary, a real backend and a real client.

mod common;

use common::{Backend, Proxyd, free_port, get, get_with, link_request};
use hyper::StatusCode;
use securely_proto::proxy::{ListSitesRequest, UnlinkSiteRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn a_linked_site_is_proxied_with_forwarded_headers_and_its_host_kept() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;

    let site = proxyd.link("App", &backend.target(), &[]).await;
    assert_eq!(site.name, "app");
    assert_eq!(site.serves, vec!["app.test"]);

    let response = get(proxyd.http, Some("app.test"), "/hello").await.unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let echoed = response.echoed();
    assert_eq!(echoed["host"], "app.test");
    assert_eq!(echoed["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echoed["x-forwarded-proto"], "http");
    assert_eq!(echoed["x-forwarded-host"], "app.test");
    assert_eq!(echoed["via"], "1.1 securely-proxyd");

    // Case, port and a trailing dot do not matter for routing; the Host header goes on
    // exactly as sent, and a client's X-Forwarded-For is extended, not replaced.
    let host = format!("APP.Test.:{}", proxyd.http.port());
    let response = get_with(
        proxyd.http,
        Some(&host),
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 corporate-proxy"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let echoed = response.echoed();
    assert_eq!(echoed["host"], host);
    assert_eq!(echoed["x-forwarded-host"], host);
    assert_eq!(echoed["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(echoed["x-forwarded-proto"], "http");
    assert_eq!(echoed["via"], "1.0 corporate-proxy, 1.1 securely-proxyd");
    assert_eq!(
        backend.received.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn extra_hostnames_route_until_the_site_is_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;

    let site = proxyd
        .link(
            "shop",
            &backend.target(),
            &["WWW.Shop.Example.", "shop.example"],
        )
        .await;
    assert_eq!(site.hostnames, vec!["www.shop.example", "shop.example"]);
    assert_eq!(
        site.serves,
        vec!["shop.test", "www.shop.example", "shop.example"]
    );

    for host in ["shop.test", "www.shop.example", "shop.example"] {
        let response = get(proxyd.http, Some(host), "/").await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{host}: {}", response.body);
        assert_eq!(response.echoed()["host"], host);
    }
    let listed = proxyd
        .admin()
        .await
        .list_sites(ListSitesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites;
    assert_eq!(listed, vec![site]);

    proxyd.unlink("shop").await.unwrap();
    for host in ["shop.test", "www.shop.example"] {
        let response = get(proxyd.http, Some(host), "/").await.unwrap();
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{host}");
    }
    let again = proxyd.unlink("shop").await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert!(
        proxyd
            .admin()
            .await
            .list_sites(ListSitesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sites
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_and_missing_hosts_get_proxyd_pages() {
    let dir = tempfile::tempdir().unwrap();
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;

    let response = get(proxyd.http, Some("nobody.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        response.body.contains("<code>nobody.test</code>"),
        "{}",
        response.body
    );
    assert!(
        response
            .body
            .contains("securelyctl site:link NAME HOST:PORT")
    );

    let response = get(proxyd.http, Some("<img src=x>.test"), "/")
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert!(
        response.body.contains("&lt;img src=x&gt;.test"),
        "{}",
        response.body
    );
    assert!(!response.body.contains("<img"));

    // HTTP/1.1 without Host, then the shortest HTTP/1.0 request there is.
    let response = get(proxyd.http, None, "/").await.unwrap();
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.body.contains("no Host header"),
        "{}",
        response.body
    );
    let mut stream = tokio::net::TcpStream::connect(proxyd.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // CONNECT is not proxied (pingora refuses it before any site is looked up).
    let mut stream = tokio::net::TcpStream::connect(proxyd.http).await.unwrap();
    stream
        .write_all(b"CONNECT nobody.test:443 HTTP/1.1\r\nHost: nobody.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}

#[tokio::test]
async fn a_site_leading_back_to_proxyd_is_refused_or_answered_508() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    let mut admin = proxyd.admin().await;

    // Its own listener as an IP target is refused when the site is linked.
    let status = admin
        .link_site(link_request("loop", &proxyd.http.to_string(), &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("target: ") && status.message().contains("own listener"),
        "{}",
        status.message()
    );

    // A hostname that resolves back to proxyd goes round once, then gets a 508.
    let by_name = format!("localhost:{}", proxyd.http.port());
    proxyd.link("loop", &by_name, &[]).await;
    let response = get(proxyd.http, Some("loop.test"), "/").await.unwrap();
    assert_eq!(
        response.status,
        StatusCode::LOOP_DETECTED,
        "{}",
        response.body
    );
    assert_eq!(response.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        response.body.contains("<code>loop</code>"),
        "{}",
        response.body
    );
    assert!(response.body.contains(&by_name), "{}", response.body);

    // A request already marked by a proxyd is never forwarded.
    proxyd.link("app", &backend.target(), &[]).await;
    let response = get_with(
        proxyd.http,
        Some("app.test"),
        "/",
        &[("via", "1.0 fred, 1.1 securely-proxyd")],
    )
    .await
    .unwrap();
    assert_eq!(response.status, StatusCode::LOOP_DETECTED);
    assert_eq!(
        backend.received.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let response = get(proxyd.http, Some("app.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn a_site_whose_backend_is_down_gets_a_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    let down = format!("127.0.0.1:{}", free_port());
    proxyd.link("sleepy", &down, &[]).await;

    let response = get(proxyd.http, Some("sleepy.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        response.body.contains("<code>sleepy</code>"),
        "{}",
        response.body
    );
    assert!(response.body.contains(&down));
    assert!(response.body.contains("refused"), "{}", response.body);
    // proxyd does not reuse the connection after a failed forward, and says so.
    assert_eq!(response.headers["connection"], "close");

    // Once the app is up, the same site answers.
    let backend = Backend::start().await;
    proxyd.link("sleepy", &backend.target(), &[]).await;
    let response = get(proxyd.http, Some("sleepy.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn invalid_arguments_are_refused_by_field_and_the_proxy_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let proxyd = Proxyd::start(dir.path(), free_port(), 30).await;
    let target = backend.target();
    proxyd.link("owner", &target, &["taken.example"]).await;
    let mut admin = proxyd.admin().await;

    for (request, field) in [
        (link_request("", &target, &[]), "name"),
        (link_request("bad_name", &target, &[]), "name"),
        (link_request("a.b", &target, &[]), "name"),
        (link_request("ok", "", &[]), "target"),
        (link_request("ok", "localhost", &[]), "target"),
        (link_request("ok", "127.0.0.1:0", &[]), "target"),
        (link_request("ok", "127.0.0.1:70000", &[]), "target"),
        (link_request("ok", "::1:80", &[]), "target"),
        (
            link_request("ok", &target, &["fine.example", "not valid"]),
            "hostnames[1]",
        ),
        (
            link_request("ok", &target, &["x".repeat(300).as_str()]),
            "hostnames[0]",
        ),
        (
            link_request("ok", &target, &["many.example"; 257]),
            "hostnames",
        ),
    ] {
        let status = admin.link_site(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{request:?}: {}",
            status.message()
        );
    }
    let status = admin
        .unlink_site(UnlinkSiteRequest {
            name: "no such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = admin
        .link_site(link_request("thief", &target, &["Taken.Example"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains("\"owner\""),
        "{}",
        status.message()
    );
    let status = admin
        .link_site(link_request("taken", &target, &["owner.test"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    // Nothing was half-applied, and the proxy still routes.
    let sites = admin
        .list_sites(ListSitesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sites;
    assert_eq!(sites.len(), 1);
    let response = get(proxyd.http, Some("taken.example"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        get(proxyd.http, Some("thief.test"), "/")
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(!proxyd.log().contains("panicked"), "{}", proxyd.log());
}
