//! The proxy logic, phase by phase: route by Host, forward with `X-Forwarded-*`, and
//! answer with proxyd's own pages when there is nowhere (or no one) to forward to.
//!
//! * `new_ctx`: the request counts as in flight until its context is dropped.
//! * `request_filter`: Host (or the URI's authority) -> site; 400 without a host, 404
//!   when no site serves it.
//! * `upstream_peer`: the site's target, resolved when it is a hostname; each address is
//!   tried in turn (`fail_to_connect` asks for a retry while some remain).
//! * `upstream_request_filter`: `X-Forwarded-For/Proto/Host`; the Host header is left as
//!   the client sent it.
//! * `fail_to_proxy`: 502 naming the site when its backend cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header;
use pingora::ErrorType::{self, ConnectNoRoute, ConnectRefused, ConnectTimedout, HTTPStatus};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource};

use crate::drain::{InFlight, RequestGuard};
use crate::pages::{self, Page};
use crate::routing::{Route, Routes, normalize_host};
use crate::sites::{Target, TargetHost};

/// How long to wait for a backend to accept the TCP connection.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the system resolver when a site's target is a hostname.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `ProxyHttp` implementation: routes requests to the linked sites.
pub struct SiteProxy {
    routes: Arc<Routes>,
    in_flight: Arc<InFlight>,
}

impl SiteProxy {
    /// A proxy reading the live routing table and counting requests in `in_flight`.
    pub fn new(routes: Arc<Routes>, in_flight: Arc<InFlight>) -> Self {
        Self { routes, in_flight }
    }
}

/// Per-request state.
pub struct RequestCtx {
    _in_flight: RequestGuard,
    /// The site, once routed.
    route: Option<Arc<Route>>,
    /// The host as the client sent it (Host header or authority).
    client_host: Option<String>,
    /// The backend's addresses, resolved on the first attempt.
    candidates: Vec<SocketAddr>,
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
            _in_flight: self.in_flight.enter(),
            route: None,
            client_host: None,
            candidates: Vec::new(),
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
                respond(session, &pages::missing_host(problem)).await?;
                return Ok(true);
            }
        };
        let Some(host) = normalize_host(&raw) else {
            respond(session, &pages::missing_host("The Host header is empty.")).await?;
            return Ok(true);
        };
        match self.routes.route(&host) {
            Some(route) => {
                ctx.route = Some(route);
                ctx.client_host = Some(raw);
                Ok(false)
            }
            None => {
                tracing::debug!(%host, "no site for host");
                respond(session, &pages::unknown_host(&host)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer called for an unrouted request",
            ));
        };
        if ctx.candidates.is_empty() {
            match resolve(&route.target).await {
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
            .map(|addr| addr.ip().to_canonical());
        if let Some(ip) = client_ip {
            let forwarded_for = append_forwarded_for(upstream_request, &ip.to_string());
            upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = &ctx.client_host {
            upstream_request.insert_header("x-forwarded-host", host.as_str())?;
            if !upstream_request.headers.contains_key(header::HOST) {
                // An HTTP/2 request may carry its host only as :authority.
                upstream_request.insert_header(header::HOST, host.as_str())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = status_for(e);
        if code > 0 && session.response_written().is_none() {
            let page = match (&ctx.route, code) {
                (Some(route), 502) => pages::backend_unreachable(
                    &route.site,
                    &route.target.to_string(),
                    ctx.last_failure
                        .as_deref()
                        .unwrap_or("the connection failed before a complete response came back"),
                ),
                _ => pages::failure(code),
            };
            if let Err(write_error) = respond(session, &page).await {
                tracing::debug!("cannot send the {code} page: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
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

/// The host a request is for: the URI's authority (HTTP/2 `:authority`; pingora keeps an
/// HTTP/1 absolute-form authority out of the URI and reconciles it with Host itself) or
/// the one Host header. Explains what is wrong otherwise.
fn client_host(request: &RequestHeader) -> Result<String, &'static str> {
    if let Some(authority) = request.uri.authority() {
        return Ok(authority.as_str().to_string());
    }
    let mut hosts = request.headers.get_all(header::HOST).iter();
    let host = hosts.next().ok_or("The request has no Host header.")?;
    if hosts.next().is_some() {
        return Err("The request has more than one Host header.");
    }
    host.to_str()
        .map(str::to_string)
        .map_err(|_| "The Host header is not plain text.")
}

/// The `X-Forwarded-For` value: every value the request already carries, then `client`.
fn append_forwarded_for(request: &RequestHeader, client: &str) -> Vec<u8> {
    let mut value = Vec::new();
    for prior in request.headers.get_all("x-forwarded-for") {
        let prior = prior.as_bytes().trim_ascii();
        if !prior.is_empty() {
            value.extend_from_slice(prior);
            value.extend_from_slice(b", ");
        }
    }
    value.extend_from_slice(client.as_bytes());
    value
}

/// The backend's addresses: the IP itself, or what the resolver says for a hostname.
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, String> {
    let name = match &target.host {
        TargetHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
        TargetHost::Name(name) => name.as_str(),
    };
    let lookup = tokio::net::lookup_host((name, target.port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(format!("{name} could not be resolved ({e})")),
        Err(_) => {
            return Err(format!(
                "resolving {name} took longer than {}s",
                RESOLVE_TIMEOUT.as_secs()
            ));
        }
    };
    if addrs.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Ok(addrs)
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

/// The status pingora's default `fail_to_proxy` would answer with (0: the client is
/// gone, answer nothing).
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Sends one of proxyd's own pages as the whole response.
async fn respond(session: &mut Session, page: &Page) -> pingora::Result<()> {
    let mut response = ResponseHeader::build(page.status, Some(3))?;
    response.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, page.body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
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

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn the_host_comes_from_the_one_host_header_or_the_authority() {
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
        // HTTP/2 carries the host as :authority, which lands in the URI.
        let mut h2 = request(&[]);
        h2.set_uri("http://a.test:8080/x".parse().unwrap());
        assert_eq!(client_host(&h2).unwrap(), "a.test:8080");
    }

    #[test]
    fn forwarded_for_appends_the_client_to_every_prior_value() {
        assert_eq!(append_forwarded_for(&request(&[]), "10.0.0.9"), b"10.0.0.9");
        let req = request(&[
            ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", " 3.3.3.3 "),
        ]);
        assert_eq!(
            append_forwarded_for(&req, "10.0.0.9"),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
    }

    #[test]
    fn failures_map_to_statuses_like_pingora_does() {
        let mut up = Error::new(ConnectRefused);
        up.as_up();
        assert_eq!(status_for(&up), 502);
        let mut down = Error::new(ErrorType::ReadError);
        down.as_down();
        assert_eq!(status_for(&down), 0);
        assert_eq!(status_for(&Error::new(HTTPStatus(413))), 413);
        assert_eq!(status_for(&Error::new(ErrorType::InternalError)), 500);
    }

    #[tokio::test]
    async fn ip_targets_need_no_resolver_and_bad_names_explain_themselves() {
        let ip = Target::parse("127.0.0.1:9").unwrap();
        assert_eq!(
            resolve(&ip).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let bad = Target::parse("no-such-host.invalid:80").unwrap();
        assert!(
            resolve(&bad)
                .await
                .unwrap_err()
                .contains("no-such-host.invalid")
        );
    }
}
