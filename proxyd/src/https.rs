//! What the proxy does for https: a secure site's plain-HTTP requests are redirected to
//! the TLS listener (308), a site that is not secure is not served over https (421), and
//! whether a request came over TLS (for `X-Forwarded-Proto`).

use std::net::SocketAddr;

use pingora::proxy::Session;

use crate::pages::{self, Page};
use crate::routing::Route;
use crate::tls::names::is_at_or_below;

/// https's default port, left out of redirect URLs.
const HTTPS_PORT: u16 = 443;

/// Where a secure site's plain-HTTP requests are sent.
#[derive(Debug, Clone, Default)]
pub struct HttpsPolicy {
    /// The first TLS listener's port, if there is one.
    port: Option<u16>,
    /// The dev TLD: only names under it have certificates.
    tld: String,
}

impl HttpsPolicy {
    /// Redirects to the first of `tls_listeners` (none: no redirect) for names under
    /// `tld`.
    pub fn new(tls_listeners: &[SocketAddr], tld: &str) -> Self {
        Self {
            port: tls_listeners.first().map(SocketAddr::port),
            tld: tld.to_string(),
        }
    }

    /// The https URL for a request for `host` (normalised) and `path_and_query`, or
    /// `None` when there is no TLS listener or no certificate for `host`.
    pub fn location(&self, host: &str, path_and_query: &str) -> Option<String> {
        let port = self.port?;
        if !is_at_or_below(host, &self.tld) {
            return None;
        }
        let path = if path_and_query.starts_with('/') {
            path_and_query
        } else {
            "/"
        };
        Some(if port == HTTPS_PORT {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        })
    }
}

impl HttpsPolicy {
    /// proxyd's own answer to a request for `host` (normalised) that `route` serves, when
    /// the scheme does not fit the site: a secure site over plain HTTP is redirected (when
    /// there is somewhere to redirect to), a site that is not secure over https is told
    /// so. `None`: forward it.
    pub fn answer(&self, session: &Session, host: &str, route: &Route) -> Option<Page> {
        match (route.secure, is_tls(session)) {
            (true, false) => {
                let uri = &session.req_header().uri;
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                Some(pages::to_https(&self.location(host, path)?))
            }
            (false, true) => Some(pages::not_secure(host, &route.site)),
            _ => None,
        }
    }
}

/// Whether `session`'s connection is TLS.
pub fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_name_the_port_unless_443() {
        let dev = HttpsPolicy::new(&["127.0.0.1:8443".parse().unwrap()], "test");
        assert_eq!(
            dev.location("app.test", "/a/b?c=1").as_deref(),
            Some("https://app.test:8443/a/b?c=1")
        );
        assert_eq!(
            dev.location("app.test", "").as_deref(),
            Some("https://app.test:8443/")
        );
        assert_eq!(
            dev.location("www.app.example", "/"),
            None,
            "no certificate there"
        );

        let packaged = HttpsPolicy::new(&["127.0.0.1:443".parse().unwrap()], "test");
        assert_eq!(
            packaged.location("app.test", "/").as_deref(),
            Some("https://app.test/")
        );
        assert_eq!(
            HttpsPolicy::new(&[], "test").location("app.test", "/"),
            None
        );
    }
}
