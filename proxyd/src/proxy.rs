//! The proxy logic, phase by phase: route by Host, forward with `X-Forwarded-*` and
//! `Via`, and answer with proxyd's own pages when there is nowhere (or no one) to forward
//! to.
//!
//! * `new_ctx`: the request counts as in flight until its context is dropped, or until
//!   it is upgraded (a WebSocket): from then on it counts as a tunnel (see
//!   [`crate::upgrade`]).
//! * `request_filter`: Host (or HTTP/2's `:authority`) -> site; 400 without a host, 508
//!   when the request has been through proxyd already (see [`crate::loops`]), 404 when no
//!   site serves it, 308 to https for a secure site over plain HTTP and 421 for a site
//!   that is not secure over https (see [`crate::https`]). `CONNECT`
//!   never gets here: pingora answers it 405 itself (`allow_connect_method_proxying` is
//!   off by default).
//! * `upstream_peer`: the site's target, resolved when it is a hostname (see
//!   [`crate::resolve`]); each address is tried in turn (`fail_to_connect` asks for a
//!   retry while some remain). An upgrade request's backend has no idle timeout.
//! * `upstream_request_filter`: the forwarding headers (see [`crate::forwarding`];
//!   `X-Forwarded-Proto` says whether the client came over TLS); the Host header is left
//!   as the client sent it.
//! * `response_filter`: a `101 Switching Protocols` to an upgrade request turns the request
//!   into a tunnel, with no idle timeout on the client's side either.
//! * `response_filter` (and proxyd's own pages): once proxyd's stop switch is on, the
//!   response carries `Connection: close` and its connection ends after it, however long
//!   the backend took: a request read before the stop must not leave its connection
//!   waiting for another request that a drain would then cut (see
//!   [`crate::connections`]).
//! * `fail_to_proxy`: 502 naming the site when its backend cannot be reached, 504 when it
//!   goes silent for [`UPSTREAM_READ_TIMEOUT`]; the connection is not reused after these,
//!   and the page says so (`Connection: close`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora::ErrorType::{
    self, ConnectNoRoute, ConnectRefused, ConnectTimedout, HTTPStatus, ReadTimedout,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource};
use securely_core::drain::{InFlight, InFlightGuard};

use crate::forwarding;
use crate::https::{self, HttpsPolicy};
use crate::loops;
use crate::pages::{self, Page};
use crate::resolve::{Addresses, Resolver};
use crate::routing::{Route, Routes, normalize_host};
use crate::upgrade;

/// How long to wait for a backend to accept the TCP connection.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend may stay silent while proxyd waits for its response (each read of
/// the header or the body). Generous, so that long polling and server-sent events with
/// sparse heartbeats keep working; a backend silent for longer gets the client a 504.
pub const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The `ProxyHttp` implementation: routes requests to the linked sites.
pub struct SiteProxy {
    routes: Arc<Routes>,
    in_flight: Arc<InFlight>,
    tunnels: Arc<InFlight>,
    resolver: Resolver,
    /// proxyd's stop switch: once on, every response closes its connection.
    stopping: ShutdownWatch,
    /// Redirects to https, refuses https for sites that are not secure.
    https: HttpsPolicy,
}

impl SiteProxy {
    /// A proxy reading the live routing table and counting requests in `in_flight`.
    pub fn new(routes: Arc<Routes>, in_flight: Arc<InFlight>) -> Self {
        Self {
            routes,
            in_flight,
            tunnels: InFlight::new(),
            resolver: Resolver::default(),
            // A switch nobody can flip, until `closing_once` gives the real one.
            stopping: tokio::sync::watch::channel(false).1,
            https: HttpsPolicy::default(),
        }
    }

    /// The same proxy, sending a secure site's plain-HTTP requests where `https` says.
    pub fn with_https(mut self, https: HttpsPolicy) -> Self {
        self.https = https;
        self
    }

    /// The same proxy, answering every response with `Connection: close` once `stop`
    /// turns true.
    pub fn closing_once(mut self, stop: ShutdownWatch) -> Self {
        self.stopping = stop;
        self
    }

    /// The requests in flight, counted from their header to the end of their response
    /// (or to their upgrade).
    pub fn requests(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }

    /// The upgraded connections (WebSockets), counted from the backend's 101 to their end.
    pub fn tunnels(&self) -> Arc<InFlight> {
        self.tunnels.clone()
    }

    /// Turns keep-alive off for the response about to be written when proxyd is stopping.
    fn close_if_stopping(&self, session: &mut Session) {
        if *self.stopping.borrow() {
            session.set_keepalive(None);
        }
    }

    /// Sends one of proxyd's own pages as the whole response.
    async fn respond(&self, session: &mut Session, page: &Page) -> pingora::Result<()> {
        self.close_if_stopping(session);
        write_page(session, page).await
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// Counts the request in flight, then (once upgraded) the tunnel.
    _counted: InFlightGuard,
    /// The site, once routed.
    route: Option<Arc<Route>>,
    /// The Host header as the client sent it.
    client_host: String,
    /// The backend's addresses, resolved on the first attempt.
    candidates: Addresses,
    /// Index into `candidates` of the address being tried.
    attempt: usize,
    /// Why the last connection attempt failed, for the 502 page.
    last_failure: Option<String>,
}

#[async_trait]
impl ProxyHttp for SiteProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _counted: self.in_flight.enter(),
            route: None,
            client_host: String::new(),
            candidates: Arc::from([]),
            attempt: 0,
            last_failure: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let raw = match client_host(session.req_header()) {
            Ok(raw) => raw,
            Err(problem) => {
                self.respond(session, &pages::missing_host(problem)).await?;
                return Ok(true);
            }
        };
        let Some(host) = normalize_host(&raw) else {
            let page = pages::missing_host("The Host header is empty.");
            self.respond(session, &page).await?;
            return Ok(true);
        };
        let route = self.routes.route(&host);
        if loops::passed_through(session.req_header()) {
            tracing::warn!(%host, "request came back to proxyd: its site forwards to proxyd");
            let target = route.as_deref().map(|r| r.target.to_string());
            let site = route.as_deref().map(|r| r.site.as_str());
            let page = pages::loop_detected(&host, site.zip(target.as_deref()));
            self.respond(session, &page).await?;
            return Ok(true);
        }
        match route {
            Some(route) => {
                if let Some(page) = self.https.answer(session, &host, &route) {
                    self.respond(session, &page).await?;
                    return Ok(true);
                }
                ctx.route = Some(route);
                ctx.client_host = raw;
                Ok(false)
            }
            None => {
                tracing::debug!(%host, "no site for host");
                self.respond(session, &pages::unknown_host(&host)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer called for an unrouted request",
            ));
        };
        if ctx.candidates.is_empty() {
            match self.resolver.resolve(&route.target).await {
                Ok(addrs) => ctx.candidates = addrs,
                Err(reason) => {
                    let mut e =
                        Error::explain(ConnectNoRoute, format!("{}: {reason}", route.target));
                    e.as_up();
                    ctx.last_failure = Some(reason);
                    return Err(e);
                }
            }
        }
        let index = ctx.attempt.min(ctx.candidates.len() - 1);
        let mut peer = HttpPeer::new(ctx.candidates[index], false, String::new());
        peer.options.connection_timeout = Some(UPSTREAM_CONNECT_TIMEOUT);
        peer.options.read_timeout = Some(UPSTREAM_READ_TIMEOUT);
        if upgrade::requested(session) {
            upgrade::unbounded(&mut peer);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.last_failure = Some(describe_connect_failure(e.etype()));
        let more = ctx.attempt + 1 < ctx.candidates.len();
        if more {
            ctx.attempt += 1;
        }
        e.set_retry(more);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip());
        let scheme = if https::is_tls(session) {
            "https"
        } else {
            "http"
        };
        forwarding::add_forwarding_headers(upstream_request, client_ip, &ctx.client_host, scheme)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if upgrade::switching(session, response) {
            ctx._counted = self.tunnels.enter();
        }
        self.close_if_stopping(session);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = status_for(e);
        // The connection is not reused after a failure (below): the page says so.
        session.set_keepalive(None);
        if code > 0 && session.response_written().is_none() {
            let page = match (&ctx.route, code) {
                (Some(route), 502) => pages::backend_unreachable(
                    &route.site,
                    &route.target.to_string(),
                    ctx.last_failure
                        .as_deref()
                        .unwrap_or("the connection failed before a complete response came back"),
                ),
                (Some(route), 504) => pages::backend_timeout(
                    &route.site,
                    &route.target.to_string(),
                    UPSTREAM_READ_TIMEOUT.as_secs(),
                ),
                _ => pages::failure(code),
            };
            if let Err(write_error) = write_page(session, &page).await {
                tracing::debug!("cannot send the {code} page: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away before its answer (a closed tab, a load generator
    /// stopping) is routine, not an error of the proxy: pingora's ERROR line is dropped
    /// and [`ProxyHttp::logging`] notes it at debug level.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        is_client_gone(error)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let site = ctx.route.as_ref().map_or("-", |r| r.site.as_str());
        tracing::debug!(
            site,
            status,
            error = e.map(ToString::to_string),
            "{}",
            session.request_summary()
        );
    }
}

/// Whether `error` means the client closed or reset its connection.
fn is_client_gone(error: &Error) -> bool {
    use pingora::{ErrorSource, ErrorType};
    error.esource() == &ErrorSource::Downstream
        && matches!(
            error.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// The host a request is for: its one Host header (HTTP/1.1 requires one, and pingora
/// keeps an absolute-form target's authority out of the URI after checking that it
/// matches Host), or an HTTP/2 request's `:authority` when it has no Host. Explains what
/// is wrong otherwise.
fn client_host(request: &RequestHeader) -> Result<String, &'static str> {
    let mut hosts = request.headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return request
            .uri
            .authority()
            .map(|authority| authority.as_str().to_string())
            .ok_or("The request has no Host header.");
    };
    if hosts.next().is_some() {
        return Err("The request has more than one Host header.");
    }
    host.to_str()
        .map(str::to_string)
        .map_err(|_| "The Host header is not plain text.")
}

fn describe_connect_failure(kind: &ErrorType) -> String {
    match kind {
        ConnectRefused => "the connection was refused".into(),
        ConnectTimedout => format!(
            "nothing accepted the connection within {}s",
            UPSTREAM_CONNECT_TIMEOUT.as_secs()
        ),
        ConnectNoRoute => "there is no route to it".into(),
        other => format!("connecting failed ({})", other.as_str()),
    }
}

/// The status to answer a failure with (0: the client is gone, answer nothing): what
/// pingora's default `fail_to_proxy` would answer, except that a backend that stayed
/// silent past [`UPSTREAM_READ_TIMEOUT`] gets 504, as nginx answers.
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream if matches!(e.etype(), ReadTimedout) => 504,
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Writes one of proxyd's own pages as the whole response.
async fn write_page(session: &mut Session, page: &Page) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(page.status, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, page.body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(location) = &page.location {
        response.insert_header(header::LOCATION, location.as_str())?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(page.body.clone()), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::request;

    #[test]
    fn only_a_client_going_away_is_kept_out_of_the_error_log() {
        use pingora::{ErrorSource, ErrorType};
        let gone = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(gone.esource(), &ErrorSource::Downstream);
        assert!(is_client_gone(&gone));
        let backend_closed = Error::new(ErrorType::ConnectionClosed).into_up();
        assert!(!is_client_gone(&backend_closed));
        assert!(!is_client_gone(
            &Error::new(ErrorType::ConnectRefused).into_down()
        ));
    }

    #[test]
    fn the_host_comes_from_the_one_host_header() {
        assert_eq!(
            client_host(&request(&[("Host", "App.Test:80")])).unwrap(),
            "App.Test:80"
        );
        assert!(client_host(&request(&[])).unwrap_err().contains("no Host"));
        assert!(
            client_host(&request(&[("Host", "a.test"), ("Host", "b.test")]))
                .unwrap_err()
                .contains("more than one")
        );
        let mut binary = request(&[]);
        binary
            .append_header(
                "Host",
                http::HeaderValue::from_bytes(b"\xffx.test").unwrap(),
            )
            .unwrap();
        assert!(client_host(&binary).unwrap_err().contains("plain text"));
    }

    #[test]
    fn failures_map_to_statuses_like_pingora_does_but_a_silent_backend_gets_504() {
        let mut up = Error::new(ConnectRefused);
        up.as_up();
        assert_eq!(status_for(&up), 502);
        let mut silent = Error::new(ReadTimedout);
        silent.as_up();
        assert_eq!(status_for(&silent), 504);
        let mut slow_client = Error::new(ReadTimedout);
        slow_client.as_down();
        assert_eq!(status_for(&slow_client), 400);
        let mut down = Error::new(ErrorType::ReadError);
        down.as_down();
        assert_eq!(status_for(&down), 0);
        assert_eq!(status_for(&Error::new(HTTPStatus(413))), 413);
        assert_eq!(status_for(&Error::new(ErrorType::InternalError)), 500);
    }
}
