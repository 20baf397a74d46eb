//! What proxyd adds to a request it forwards: `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `Via`. Everything else, the `Host` header included, goes on as
//! the client sent it.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use pingora::http::RequestHeader;

/// The name proxyd gives itself in `Via` (RFC 9110 7.6.3 "received-by").
pub const VIA_PSEUDONYM: &str = "securely-proxyd";
/// The element proxyd appends to `Via`: a protocol version and its pseudonym. The version
/// is always `1.1`, also for requests received over h2 (RFC 9110 would say `2`), so that
/// one element recognises every request proxyd forwarded.
pub const VIA_ELEMENT: &str = "1.1 securely-proxyd";

/// Adds the forwarding headers to `request`, which came from `client_ip` for the host
/// `client_host` (the Host header as sent) over `scheme` (`http` or `https`).
///
/// * `X-Forwarded-For`: the client's own values, then the client's address, like nginx's
///   `$proxy_add_x_forwarded_for`. The earlier values are whatever the client claims; only
///   the last one is proxyd's word.
/// * `X-Forwarded-Proto`: `scheme`, replacing the client's.
/// * `X-Forwarded-Host`: the Host header as sent, replacing the client's.
/// * `Via`: the client's elements, then [`VIA_ELEMENT`], which lets proxyd recognise a
///   request it forwarded itself (see [`crate::loops`]).
pub fn add_forwarding_headers(
    request: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    client_host: &str,
    scheme: &'static str,
) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        let forwarded_for = appended(request, &X_FORWARDED_FOR, &ip.to_canonical().to_string());
        request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
    }
    request.insert_header(X_FORWARDED_PROTO, scheme)?;
    request.insert_header(X_FORWARDED_HOST, client_host)?;
    let via = appended(request, &header::VIA, VIA_ELEMENT);
    request.insert_header(header::VIA, via)?;
    Ok(())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The one value of the list header `name` after appending `item`: every value the
/// request carries (each trimmed, empty ones dropped), then `item`, joined by `", "`.
fn appended(request: &RequestHeader, name: &HeaderName, item: &str) -> Vec<u8> {
    let mut value = Vec::new();
    for prior in request.headers.get_all(name) {
        let prior = prior.as_bytes().trim_ascii();
        if !prior.is_empty() {
            value.extend_from_slice(prior);
            value.extend_from_slice(b", ");
        }
    }
    value.extend_from_slice(item.as_bytes());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::request;

    fn value(req: &RequestHeader, name: &str) -> String {
        let values: Vec<_> = req.headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].to_str().unwrap().to_string()
    }

    #[test]
    fn forwarded_for_appends_the_client_to_every_prior_value() {
        assert_eq!(
            appended(&request(&[]), &X_FORWARDED_FOR, "10.0.0.9"),
            b"10.0.0.9"
        );
        let req = request(&[
            ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", " 3.3.3.3 "),
            ("x-forwarded-for", ""),
        ]);
        assert_eq!(
            appended(&req, &X_FORWARDED_FOR, "10.0.0.9"),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
    }

    #[test]
    fn every_forwarding_header_is_set_and_via_is_extended() {
        let mut req = request(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("via", "1.0 fred"),
            ("via", "1.1 p.example"),
        ]);
        let client = "::ffff:192.0.2.7".parse().ok();
        add_forwarding_headers(&mut req, client, "App.Test:8080", "http").unwrap();
        assert_eq!(value(&req, "x-forwarded-for"), "192.0.2.7");
        assert_eq!(value(&req, "x-forwarded-proto"), "http");
        assert_eq!(value(&req, "x-forwarded-host"), "App.Test:8080");
        assert_eq!(
            value(&req, "via"),
            "1.0 fred, 1.1 p.example, 1.1 securely-proxyd"
        );

        let mut bare = request(&[]);
        add_forwarding_headers(&mut bare, None, "a.test", "https").unwrap();
        assert!(bare.headers.get("x-forwarded-for").is_none());
        assert_eq!(value(&bare, "x-forwarded-proto"), "https");
        assert_eq!(value(&bare, "via"), VIA_ELEMENT);
    }
}
