//! Which certificate a TLS connection gets, by the name it asks for (SNI).
//!
//! * no name, or `localhost`: the fallback certificate for `localhost`;
//! * a name the CA may not certify (outside the dev TLD): none, the handshake ends with
//!   the alert `unrecognized_name`;
//! * a name of a secure site, or one label below its `NAME.<tld>` (the leaf carries
//!   `*.NAME.<tld>`): the site's leaf;
//! * any other name under the TLD (no site, or a site not served over https): a leaf for
//!   that name alone, so the browser shows proxyd's page instead of a certificate error.

use std::sync::Arc;

use super::names::{FALLBACK_NAME, PermittedNames};
use crate::routing::{Route, Routes};

/// The certificate a connection gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertFor {
    /// The `localhost` certificate.
    Fallback,
    /// The leaf of this secure site.
    Site(Arc<Route>),
    /// A leaf for this one name.
    Name(String),
    /// None: the name is outside what the CA may certify.
    Refused,
}

/// The certificate for `server_name` (as the client sent it), given the sites in
/// `routes` and the names the CA may certify.
pub fn choose(server_name: Option<&str>, routes: &Routes, permitted: &PermittedNames) -> CertFor {
    let Some(raw) = server_name else {
        return CertFor::Fallback;
    };
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name == FALLBACK_NAME {
        return CertFor::Fallback;
    }
    if !permitted.permits(&name) || name.starts_with("*.") {
        return CertFor::Refused;
    }
    if let Some(route) = routes.route(&name).filter(|route| route.secure) {
        return CertFor::Site(route);
    }
    if let Some((_, parent)) = name.split_once('.')
        && let Some(route) = routes.route(parent)
        && route.secure
        && route
            .serves
            .first()
            .is_some_and(|primary| primary == parent)
    {
        return CertFor::Site(route);
    }
    CertFor::Name(name)
}

/// The names a secure site's leaf carries: `NAME.<tld>`, `*.NAME.<tld>`, then every extra
/// hostname the CA may certify (a certificate naming any other would be refused whole).
pub fn site_names(route: &Route, permitted: &PermittedNames) -> Vec<String> {
    let mut names = Vec::with_capacity(route.serves.len() + 1);
    if let Some(primary) = route.serves.first() {
        names.push(primary.clone());
        names.push(format!("*.{primary}"));
    }
    names.extend(
        route
            .serves
            .iter()
            .skip(1)
            .filter(|name| permitted.permits(name))
            .cloned(),
    );
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingTable;
    use crate::sites::Site;

    fn routes() -> Routes {
        let mut app = Site::new(
            "app",
            "127.0.0.1:1",
            &["api.test".into(), "www.app.example".into()],
            "test",
        )
        .unwrap();
        app.secure = true;
        let plain = Site::new("plain", "127.0.0.1:2", &[], "test").unwrap();
        let routes = Routes::default();
        routes.publish(RoutingTable::build([&app, &plain], "test"));
        routes
    }

    fn site(choice: CertFor) -> String {
        match choice {
            CertFor::Site(route) => route.site.clone(),
            other => panic!("not a site's leaf: {other:?}"),
        }
    }

    #[test]
    fn names_pick_the_site_a_name_of_their_own_the_fallback_or_nothing() {
        let routes = routes();
        let permitted = PermittedNames::for_tld("test");
        let pick = |name: Option<&str>| choose(name, &routes, &permitted);
        assert_eq!(pick(None), CertFor::Fallback);
        assert_eq!(pick(Some("LocalHost")), CertFor::Fallback);
        assert_eq!(site(pick(Some("App.Test."))), "app");
        assert_eq!(site(pick(Some("api.test"))), "app");
        assert_eq!(site(pick(Some("feature-1.app.test"))), "app", "wildcard");
        assert_eq!(
            pick(Some("a.feature-1.app.test")),
            CertFor::Name("a.feature-1.app.test".into()),
            "a wildcard covers one label"
        );
        assert_eq!(pick(Some("x.api.test")), CertFor::Name("x.api.test".into()));
        assert_eq!(pick(Some("plain.test")), CertFor::Name("plain.test".into()));
        assert_eq!(
            pick(Some("nosite.test")),
            CertFor::Name("nosite.test".into())
        );
        assert_eq!(pick(Some("www.app.example")), CertFor::Refused);
        assert_eq!(pick(Some("example.com")), CertFor::Refused);
    }

    #[test]
    fn a_sites_leaf_names_what_the_ca_may_certify() {
        let routes = routes();
        let route = routes.route("app.test").unwrap();
        let names = site_names(&route, &PermittedNames::for_tld("test"));
        assert_eq!(names, ["app.test", "*.app.test", "api.test"]);
    }
}
