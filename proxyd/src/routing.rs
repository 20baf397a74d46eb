//! The routing table the proxy path reads: hostname -> site.
//!
//! The table is immutable once built. The site store builds a new one on every change and
//! swaps it in whole ([`Routes::publish`]); a request looks its host up with one atomic
//! load and no lock ([`Routes::route`]).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::sites::{Site, Target};

/// Where requests for one hostname go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The site's name, for pages and logs.
    pub site: String,
    /// The backend.
    pub target: Target,
    /// Whether the site is served over https (and its plain-HTTP requests redirected).
    pub secure: bool,
    /// Every hostname the site answers for, `NAME.<tld>` first.
    pub serves: Arc<[String]>,
}

/// An immutable hostname -> route map.
#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: HashMap<String, Arc<Route>>,
}

impl RoutingTable {
    /// A table serving every hostname of `sites`. The store guarantees that hostnames do
    /// not overlap; should they, the first site wins.
    pub fn build<'a>(sites: impl IntoIterator<Item = &'a Site>, tld: &str) -> Self {
        let mut routes = HashMap::new();
        for site in sites {
            let serves: Arc<[String]> = site.serves(tld).into();
            let route = Arc::new(Route {
                site: site.name.clone(),
                target: site.target.clone(),
                secure: site.secure,
                serves: serves.clone(),
            });
            for hostname in serves.iter() {
                routes
                    .entry(hostname.clone())
                    .or_insert_with(|| route.clone());
            }
        }
        Self { routes }
    }

    /// The route for a hostname already normalised with [`normalize_host`].
    pub fn route(&self, host: &str) -> Option<&Arc<Route>> {
        self.routes.get(host)
    }

    /// How many hostnames are routed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no hostname is routed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The current routing table, shared by the site store (writer) and the proxy (readers).
#[derive(Debug, Default)]
pub struct Routes {
    current: ArcSwap<RoutingTable>,
}

impl Routes {
    /// The route for a normalised host in the table as it is now. Takes arc-swap's guard
    /// (no reference-count traffic on the shared table) and clones only the route.
    pub fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.current.load().route(host).cloned()
    }

    /// The table as it is now; later changes do not affect the snapshot.
    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// Replaces the table.
    pub fn publish(&self, table: RoutingTable) {
        self.current.store(Arc::new(table));
    }
}

/// Turns a `Host` header or `:authority` into the form routes are keyed by: lowercased,
/// without the port and without a trailing dot. IPv6 literals lose their brackets.
/// `None` when nothing is left.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // "[v6]" or "[v6]:port"
        match rest.split_once(']') {
            Some((inside, after))
                if after.is_empty() || after.strip_prefix(':').is_some_and(is_port) =>
            {
                inside
            }
            _ => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') && is_port(port) => host,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Digits only; an empty port (`host:`) is allowed by RFC 3986.
fn is_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_port_trailing_dot_and_case() {
        assert_eq!(normalize_host("App.Test").as_deref(), Some("app.test"));
        assert_eq!(normalize_host("app.test:8080").as_deref(), Some("app.test"));
        assert_eq!(normalize_host("app.test.").as_deref(), Some("app.test"));
        assert_eq!(normalize_host("APP.test.:80").as_deref(), Some("app.test"));
        assert_eq!(normalize_host("app.test:").as_deref(), Some("app.test"));
        assert_eq!(normalize_host(" app.test ").as_deref(), Some("app.test"));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(normalize_host("[::1]").as_deref(), Some("::1"));
        assert_eq!(normalize_host("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn odd_hosts_are_kept_whole_or_rejected_when_empty() {
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host(":80"), None);
        assert_eq!(normalize_host("."), None);
        assert_eq!(normalize_host("a:b").as_deref(), Some("a:b"));
        assert_eq!(normalize_host("<b>x</b>").as_deref(), Some("<b>x</b>"));
    }

    #[test]
    fn a_table_routes_every_hostname_of_every_site() {
        let a = Site::new("a", "127.0.0.1:1", &["www.a.example".into()], "test").unwrap();
        let b = Site::new("b", "localhost:2", &[], "test").unwrap();
        let table = RoutingTable::build([&a, &b], "test");
        assert_eq!(table.len(), 3);
        assert_eq!(table.route("a.test").unwrap().site, "a");
        assert_eq!(table.route("www.a.example").unwrap().site, "a");
        assert_eq!(
            table.route("b.test").unwrap().target.to_string(),
            "localhost:2"
        );
        assert!(table.route("c.test").is_none());

        let routes = Routes::default();
        let before = routes.snapshot();
        routes.publish(table);
        assert!(before.is_empty());
        assert_eq!(routes.snapshot().len(), 3);
        assert_eq!(routes.route("www.a.example").unwrap().site, "a");
    }
}
