//! The site store's tests.

use super::*;
use crate::sites::MAX_HOSTNAMES;

const OWN_LISTENER: &str = "127.0.0.1:8080";

fn setup(dir: &std::path::Path, own: OwnListeners) -> StoreSetup {
    let routes = Arc::new(Routes::default());
    StoreSetup {
        tld: "test".into(),
        own,
        routes: routes.clone(),
        tree: dir.to_path_buf(),
        certs: crate::tls::certs::Certs::new(routes),
    }
}

fn store(dir: &std::path::Path) -> (SiteStore, Arc<Routes>) {
    let db = sled::Config::new().path(dir).open().unwrap();
    let own = OwnListeners::new(vec![OWN_LISTENER.parse().unwrap()]);
    let setup = setup(dir, own);
    (setup.open(db).unwrap(), setup.routes)
}

#[test]
fn sites_are_linked_replaced_unlinked_and_routed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, routes) = store(dir.path());
    let site = store
        .link("App", "127.0.0.1:3000", &["www.app.example".into()])
        .unwrap();
    assert_eq!(site.name, "app");
    assert_eq!(routes.snapshot().route("app.test").unwrap().site, "app");
    assert_eq!(
        routes.snapshot().route("www.app.example").unwrap().site,
        "app"
    );

    store.link("app", "localhost:4000", &[]).unwrap();
    assert!(routes.snapshot().route("www.app.example").is_none());
    assert_eq!(
        routes
            .snapshot()
            .route("app.test")
            .unwrap()
            .target
            .to_string(),
        "localhost:4000"
    );

    store.unlink("APP").unwrap();
    assert!(routes.snapshot().is_empty());
    assert!(matches!(store.unlink("app"), Err(StoreError::NotFound(_))));
}

#[test]
fn a_hostname_belongs_to_one_site() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store(dir.path());
    store
        .link("a", "127.0.0.1:1", &["shared.example".into()])
        .unwrap();
    let err = store
        .link("b", "127.0.0.1:2", &["shared.example".into()])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "hostnames: shared.example is already served by site \"a\""
    );
    let err = store
        .link("c", "127.0.0.1:2", &["a.test".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Taken { ref site, .. } if site == "a"));
    // A site may keep its own hostnames when it is replaced.
    store
        .link("a", "127.0.0.1:9", &["shared.example".into()])
        .unwrap();
    assert_eq!(store.len(), 1);
}

#[test]
fn sites_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = store(dir.path());
        store
            .link("a", "[::1]:8080", &["x.example".into()])
            .unwrap();
        store.link("b", "localhost:1", &[]).unwrap();
        store.close().unwrap();
    }
    let (store, routes) = store(dir.path());
    let names: Vec<_> = store.list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(
        routes
            .snapshot()
            .route("x.example")
            .unwrap()
            .target
            .to_string(),
        "[::1]:8080"
    );
}

#[test]
fn reopening_republishes_what_the_tree_holds_now() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), OwnListeners::default());
    let open = || {
        setup
            .open(sled::Config::new().path(dir.path()).open().unwrap())
            .unwrap()
    };
    let first = open();
    first.link("old", "127.0.0.1:1", &[]).unwrap();
    first.close().unwrap();
    // The tree is closed; the routing table still serves.
    let routes = &setup.routes;
    assert_eq!(routes.snapshot().route("old.test").unwrap().site, "old");

    // Another instance changes the tree meanwhile.
    let (other, _) = store(dir.path());
    other.unlink("old").unwrap();
    other.link("new", "127.0.0.1:2", &[]).unwrap();
    other.close().unwrap();
    assert!(routes.snapshot().route("new.test").is_none());

    let again = open();
    assert!(routes.snapshot().route("old.test").is_none());
    assert_eq!(routes.snapshot().route("new.test").unwrap().site, "new");
    let names: Vec<_> = again.list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["new"]);
}

#[test]
fn undecodable_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(SITES_TREE)
            .unwrap()
            .insert("junk", &b"\xff\xff"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let (store, _) = store(dir.path());
    assert!(store.list().is_empty());
    store.link("junk", "127.0.0.1:1", &[]).unwrap();
}

#[test]
fn a_site_may_not_target_proxyd_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (store, routes) = store(dir.path());
    for target in [OWN_LISTENER, "[::ffff:127.0.0.1]:8080", "0.0.0.0:8080"] {
        let err = store.link("loop", target, &[]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(f) if f.field == "target"),
            "{target}: {err}"
        );
        assert!(err.to_string().contains("own listener"), "{err}");
    }
    assert!(routes.snapshot().is_empty());
    store.link("next-door", "127.0.0.1:8081", &[]).unwrap();
    // A hostname is not resolved here; the request-time check catches it.
    store.link("by-name", "localhost:8080", &[]).unwrap();
}

#[test]
fn readers_do_not_wait_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store(dir.path());
    store.link("a", "127.0.0.1:1", &[]).unwrap();
    let store = Arc::new(store);
    // A writer in the middle of a slow flush holds the writer lock.
    let writing = store.write_lock();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || (store.len(), store.list().len()))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !reader.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a reader waited for the writer"
        );
        std::thread::yield_now();
    }
    assert_eq!(reader.join().unwrap(), (1, 1));
    drop(writing);
}

#[test]
fn many_hostnames_are_checked_against_the_routing_table() {
    let dir = tempfile::tempdir().unwrap();
    let (store, routes) = store(dir.path());
    let first: Vec<String> = (0..MAX_HOSTNAMES)
        .map(|i| format!("a{i}.example"))
        .collect();
    store.link("a", "127.0.0.1:1", &first).unwrap();
    let mut second: Vec<String> = (0..MAX_HOSTNAMES - 1)
        .map(|i| format!("b{i}.example"))
        .collect();
    second.push(format!("a{}.example", MAX_HOSTNAMES - 1));
    let err = store.link("b", "127.0.0.1:2", &second).unwrap_err();
    assert!(
        matches!(&err, StoreError::Taken { hostname, site, .. }
            if *hostname == format!("a{}.example", MAX_HOSTNAMES - 1) && site == "a"),
        "{err}"
    );
    second.pop();
    store.link("b", "127.0.0.1:2", &second).unwrap();
    assert_eq!(routes.snapshot().len(), 2 * MAX_HOSTNAMES + 1);
}
