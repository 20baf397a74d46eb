//! A site is acknowledged only once it is on disk (flushed and fdatasync'd): a failing
//! disk sync, injected into the real daemon through the debug-build hook of
//! `securely_core::durable::fault`, leaves the site unacknowledged and unserved, and
//! proxyd exits for a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Proxyd, free_port, get, link_request};
use hyper::StatusCode;
use securely_core::durable::EXIT_COMMIT_FAILED;
use securely_core::durable::fault::SYNC_FAULT_ENV;
use securely_proto::proxy::ListSitesRequest;

/// How long the injected sync takes before it fails.
const SLOW_SYNC: Duration = Duration::from_millis(1500);
/// How long a reader may take while a writer's sync is pending: far below [`SLOW_SYNC`].
const PROMPT: Duration = Duration::from_millis(500);

async fn site_names(proxyd: &Proxyd) -> Vec<String> {
    let sites = proxyd.admin().await.list_sites(ListSitesRequest {}).await;
    sites
        .unwrap()
        .into_inner()
        .sites
        .into_iter()
        .map(|s| s.name)
        .collect()
}

#[tokio::test]
async fn a_site_whose_sync_fails_is_never_acknowledged_nor_served() {
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("sync-fault");
    let backend = Backend::start().await;
    let port = free_port();
    let mut proxyd = Proxyd::spawn_with(dir.path(), port, 10, |command| {
        command.env(SYNC_FAULT_ENV, &fault);
    });
    proxyd.wait_serving().await;
    proxyd.link("kept", &backend.target(), &[]).await;

    std::fs::write(&fault, format!("delay={} fail", SLOW_SYNC.as_millis())).unwrap();
    let mut admin = proxyd.admin().await;
    let target = backend.target();
    let link =
        tokio::spawn(async move { admin.link_site(link_request("doomed", &target, &[])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While its sync is pending the site is neither listed nor routed, and readers do not
    // wait for the writer.
    let asked = Instant::now();
    assert_eq!(site_names(&proxyd).await, vec!["kept"]);
    let response = get(proxyd.http, Some("doomed.test"), "/").await.unwrap();
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert!(asked.elapsed() < PROMPT, "a reader waited for the writer");

    assert!(
        link.await.unwrap().is_err(),
        "a site whose sync failed was acknowledged"
    );
    let status = proxyd.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(EXIT_COMMIT_FAILED), "{}", proxyd.log());
    drop(proxyd);

    // Restarted on a healthy disk: the acknowledged site is there and served; the doomed
    // one, never acknowledged, is either wholly there or absent.
    std::fs::remove_file(&fault).unwrap();
    let proxyd = Proxyd::start(dir.path(), port, 10).await;
    let names = site_names(&proxyd).await;
    assert!(
        names == ["kept"] || names == ["doomed", "kept"],
        "{names:?}"
    );
    for name in names {
        let response = get(proxyd.http, Some(&format!("{name}.test")), "/")
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::OK, "{name}");
    }
}
