//! https for local development, across processes: the local CA as `securelyctl ca:export`
//! prints it, `site:secure` / `site:unsecure`, and https itself through a client whose
//! only root is the exported CA.

use securely_tests::tls::{self, TlsClient};
use securely_tests::{Stack, StackConfig, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// The dev TLD of a test stack.
const TLD: &str = "test";

#[test]
fn the_local_ca_is_name_constrained_to_the_tld_and_kept_across_a_restart() {
    let stack = Stack::start();
    let pem = stack.ctl_ok(&["ca:export"]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");

    let (_, block) = parse_x509_pem(pem.as_bytes()).expect("one PEM block");
    let cert = block.parse_x509().expect("an X.509 certificate");
    let basic = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(basic.critical && basic.value.ca);
    assert_eq!(basic.value.path_len_constraint, Some(0));
    let usage = cert.key_usage().unwrap().expect("key usage").value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    assert!(!usage.digital_signature() && !usage.key_encipherment());
    let constraints = cert.name_constraints().unwrap().expect("name constraints");
    assert!(constraints.critical);
    let permitted: Vec<String> = constraints
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|subtree| match subtree.base {
            GeneralName::DNSName(name) => name.to_string(),
            ref other => panic!("unexpected permitted subtree {other:?}"),
        })
        .collect();
    assert_eq!(permitted, [TLD, "localhost"]);
    let excluded = constraints
        .value
        .excluded_subtrees
        .as_ref()
        .expect("IPs excluded");
    assert!(
        excluded
            .iter()
            .all(|s| matches!(s.base, GeneralName::IPAddress(_))),
        "{excluded:?}"
    );
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "an EC key"
    );

    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    assert_eq!(stack.ctl_ok(&["ca:export"]), pem, "the CA is kept");
}

#[test]
fn securing_needs_a_site_by_a_valid_name() {
    let stack = Stack::start();
    let out = stack.ctl(&["site:secure", "nothing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("nothing"),
        "{err}"
    );

    let out = stack.ctl(&["site:secure", "not_a.label"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument") && err.contains("name"),
        "{err}"
    );

    let out = stack.ctl(&["site:unsecure", "nothing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not found"), "{err}");

    stack.ctl_ok(&["site:link", "app", "127.0.0.1:9"]);
    let out = stack.ctl_ok(&["site:secure", "app"]);
    assert!(out.contains("https://app.test"), "{out}");
    let list = stack.ctl_ok(&["site:list", "--json"]);
    let sites: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(sites[0]["secure"], true, "{list}");
    // Relinking keeps it secure; unsecuring is kept across a restart.
    stack.ctl_ok(&["site:link", "app", "127.0.0.1:10"]);
    let sites: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    assert_eq!(sites[0]["secure"], true);
    stack.ctl_ok(&["site:unsecure", "app"]);
    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    let sites: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    assert_eq!(sites[0]["secure"], false);
}

/// A stack with own binaries (for `reload`), the site `app` linked to an echo backend and
/// secured, and the CA as `ca:export` prints it.
async fn secure_app() -> (Stack, http::Backend, String) {
    let stack = Stack::start_with(StackConfig {
        own_binaries: true,
        ..StackConfig::default()
    });
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "app", &backend.addr.to_string()]);
    stack.ctl_ok(&["site:secure", "app"]);
    let ca = stack.ctl_ok(&["ca:export"]);
    (stack, backend, ca)
}

/// The leaf served for `name`, checked against `ca` alone.
async fn leaf_for(stack: &Stack, ca: &str, name: &str) -> Vec<u8> {
    let client = TlsClient::trusting(ca, tls::HTTP1).unwrap();
    let stream = client.connect(stack.https, name).await.unwrap();
    tls::leaf(&stream).expect("a certificate")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secure_site_answers_https_with_h2_its_wildcard_and_redirects_http() {
    let (stack, _backend, ca) = secure_app().await;

    // HTTP/1.1 over TLS, SNI app.test, the CA the only root.
    let client = TlsClient::trusting(&ca, tls::HTTP1).unwrap();
    let stream = client.connect(stack.https, "app.test").await.unwrap();
    assert_eq!(tls::negotiated(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let reply = http::get_on(stream, "app.test", "/one?x=1").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.body.to_lowercase();
    assert!(body.contains("path: /one?x=1"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    // h2 by ALPN; the request names its host in :authority only.
    let client = TlsClient::trusting(&ca, tls::H2_THEN_HTTP1).unwrap();
    let stream = client.connect(stack.https, "app.test").await.unwrap();
    assert_eq!(tls::negotiated(&stream).as_deref(), Some(&b"h2"[..]));
    let (status, body) = h2_get(stream, "https://app.test/two").await;
    assert_eq!(status, 200, "{body}");
    let body = body.to_lowercase();
    assert!(body.contains("path: /two"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    // A name one label below the site's is covered by its leaf (*.app.test).
    let client = TlsClient::trusting(&ca, tls::HTTP1).unwrap();
    let stream = client
        .connect(stack.https, "feature-1.app.test")
        .await
        .unwrap();
    let reply = http::get_on(stream, "feature-1.app.test", "/")
        .await
        .unwrap();
    assert_eq!(
        reply.status, 404,
        "no site is linked for it: {}",
        reply.body
    );

    // Plain HTTP is sent to https, to the TLS listener's port.
    let reply = http::get(stack.http, "app.test", "/three?y=2")
        .await
        .unwrap();
    assert_eq!(reply.status, 308, "{}", reply.body);
    assert_eq!(
        reply.headers.get("location").map(String::as_str),
        Some(format!("https://app.test:{}/three?y=2", stack.https.port()).as_str())
    );
    // Unsecured: plain HTTP is served again.
    stack.ctl_ok(&["site:unsecure", "app"]);
    let reply = http::get(stack.http, "app.test", "/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .body
            .to_lowercase()
            .contains("x-forwarded-proto: http\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_kept_across_a_restart_and_a_reload_and_shown_in_status() {
    let (stack, _backend, ca) = secure_app().await;
    let leaf = leaf_for(&stack, &ca, "app.test").await;
    let fallback = leaf_for(&stack, &ca, "localhost").await;

    let sites: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["site:list", "--json"])).unwrap();
    let expiry = sites[0]["leaf_not_after_unix"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = (expiry - now) / 86400;
    assert!((80..=90).contains(&days), "a leaf of weeks: {days} days");
    let status: serde_json::Value =
        serde_json::from_str(&stack.ctl_ok(&["status", "--json"])).unwrap();
    let https = &status["https"];
    let (_, block) = parse_x509_pem(ca.as_bytes()).unwrap();
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &block.contents)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(
        https["ca_sha256_fingerprint"],
        fingerprint.as_str(),
        "{status}"
    );
    assert_eq!(https["sites"][0]["name"], "app", "{status}");
    assert_eq!(https["sites"][0]["leaf_not_after_unix"], expiry, "{status}");
    let table = stack.ctl_ok(&["status"]);
    assert!(table.contains(&fingerprint), "{table}");
    assert!(table.contains("app.test"), "{table}");

    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    assert_eq!(stack.ctl_ok(&["ca:export"]), ca);
    assert_eq!(leaf_for(&stack, &ca, "app.test").await, leaf, "same leaf");
    assert_eq!(leaf_for(&stack, &ca, "localhost").await, fallback);

    stack.ctl_ok(&["reload", "--quiet"]);
    assert_eq!(stack.ctl_ok(&["ca:export"]), ca);
    assert_eq!(leaf_for(&stack, &ca, "app.test").await, leaf, "same leaf");
    assert_eq!(leaf_for(&stack, &ca, "localhost").await, fallback);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_are_no_secure_site_get_a_page_or_an_alert() {
    let stack = Stack::start();
    let backend = http::Backend::start().await;
    stack.ctl_ok(&["site:link", "plain", &backend.addr.to_string()]);
    let ca = stack.ctl_ok(&["ca:export"]);
    let client = TlsClient::trusting(&ca, tls::HTTP1).unwrap();

    // Under the TLD but no site: a certificate for that name, and the 404 page.
    let stream = client.connect(stack.https, "nosite.test").await.unwrap();
    let reply = http::get_on(stream, "nosite.test", "/").await.unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("nosite.test"), "{}", reply.body);

    // A site that is not secure: a certificate, and a page saying so.
    let stream = client.connect(stack.https, "plain.test").await.unwrap();
    let reply = http::get_on(stream, "plain.test", "/").await.unwrap();
    assert_eq!(reply.status, 421, "{}", reply.body);
    assert!(reply.body.contains("site:secure plain"), "{}", reply.body);

    // No SNI: the CA-signed certificate for localhost, and the 404 page.
    let stream = client
        .without_sni()
        .connect(stack.https, "localhost")
        .await
        .unwrap();
    let reply = http::get_on(stream, "localhost", "/").await.unwrap();
    assert_eq!(reply.status, 404);

    // Outside the TLD: the alert unrecognized_name, no certificate.
    let err = client
        .connect(stack.https, "example.com")
        .await
        .unwrap_err();
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnrecognisedName
        )),
        "{err}"
    );
    // Plain HTTP on the TLS listener: no handshake, closed.
    let mut plain = tokio::net::TcpStream::connect(stack.https).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        plain.read_to_end(&mut answer),
    )
    .await
    .expect("closed");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // proxyd still serves, and the failed handshakes hold no drain back: each was
    // counted to its end.
    let stream = client.connect(stack.https, "nosite.test").await.unwrap();
    let reply = http::get_on(stream, "x.test", "/").await.unwrap();
    assert_eq!(reply.status, 404);
    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    let log = stack.log();
    assert!(!log.contains("never reached the proxy"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_h2_connection_is_closed_by_a_restart_not_waited_for() {
    let (stack, _backend, ca) = secure_app().await;
    let client = TlsClient::trusting(&ca, tls::H2_THEN_HTTP1).unwrap();
    let stream = client.connect(stack.https, "app.test").await.unwrap();
    let (h2, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let request = ::http::Request::get("https://app.test/").body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);

    // Kept open and idle across the restart: proxyd sends GOAWAY and closes it.
    stack.ctl_ok(&["restart", "proxyd", "--quiet"]);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), connection)
        .await
        .expect("the old instance closes the connection");
    let log = stack.log();
    // GOAWAY (NO_ERROR), then the close; the client may still be writing (its PING's
    // answer) when the socket goes, which h2 reports as an IO error: no request was on it.
    let ended = ended.unwrap();
    assert!(
        ended.as_ref().map_or_else(h2::Error::is_io, |()| true),
        "no protocol error: {ended:?}\n{log}"
    );
    assert!(!log.contains("grace period of"), "{log}");
    drop(h2);
}

/// `GET url` over HTTP/2 on `stream`: status and body.
async fn h2_get<S>(stream: S, url: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = ::http::Request::get(url).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}
