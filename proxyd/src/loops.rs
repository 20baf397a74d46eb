//! Proxy loops: a site whose target is proxyd itself would send every request back to
//! proxyd, which would forward it again, each hop one more connection and one more
//! request in flight, until something runs out.
//!
//! Two defences:
//!
//! * at `LinkSite`, an IP target that is one of proxyd's own listeners is refused
//!   ([`OwnListeners`]). A wildcard listener (`0.0.0.0:80`, `[::]:80`) counts as every
//!   local address of its family on that port;
//! * at request time, for the loops no address check can see (a hostname that resolves
//!   back to proxyd, a NAT, a listener added later): every forwarded request carries
//!   `Via: 1.1 securely-proxyd` (see [`crate::forwarding`]), and a request that arrives
//!   already carrying it is answered 508 Loop Detected ([`passed_through`]).
//!
//! The `Via` mark is the same for every proxyd, so a request that passes through two
//! *different* proxyd instances in a row is refused as well; Securely is a local
//! development proxy, and a chain of two is not a set-up it supports.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use http::header;
use pingora::http::RequestHeader;

use crate::forwarding::VIA_PSEUDONYM;

/// The addresses proxyd serves HTTP on, as a site's target must not name them.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners {
    addrs: Vec<SocketAddr>,
}

impl OwnListeners {
    /// proxyd's HTTP listeners (their real local addresses).
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Self { addrs }
    }

    /// The listener a connection to `target` would reach, if any.
    pub fn reached_by(&self, target: SocketAddr) -> Option<SocketAddr> {
        self.reached_by_with(target, is_local_address)
    }

    fn reached_by_with(
        &self,
        target: SocketAddr,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Option<SocketAddr> {
        let ip = target.ip().to_canonical();
        self.addrs.iter().copied().find(|listener| {
            let own = listener.ip().to_canonical();
            listener.port() == target.port()
                && own.is_ipv4() == ip.is_ipv4()
                && (own == ip
                    // A wildcard listener accepts on every local address.
                    || (own.is_unspecified() && is_local(ip))
                    // Connecting to 0.0.0.0 or [::] reaches the loopback address.
                    || (ip.is_unspecified() && own.is_loopback()))
        })
    }
}

/// Whether `ip` belongs to this host: loopback, unspecified (which connects to
/// loopback), or assigned to an interface (the kernel lets a socket bind to it).
fn is_local_address(ip: IpAddr) -> bool {
    if ip.is_multicast() {
        return false;
    }
    ip.is_unspecified() || ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether the request has passed through a proxyd already: one of its `Via` elements
/// (`PROTOCOL RECEIVED-BY [COMMENT]`) was received by [`VIA_PSEUDONYM`].
pub fn passed_through(request: &RequestHeader) -> bool {
    request
        .headers
        .get_all(header::VIA)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .any(|element| {
            element
                .split(u8::is_ascii_whitespace)
                .filter(|token| !token.is_empty())
                .nth(1)
                .is_some_and(|received_by| {
                    received_by.eq_ignore_ascii_case(VIA_PSEUDONYM.as_bytes())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A host whose local addresses are loopback plus 192.0.2.10 and 2001:db8::10.
    fn local(ip: IpAddr) -> bool {
        ip.is_loopback()
            || ip.is_unspecified()
            || ip == "192.0.2.10".parse::<IpAddr>().unwrap()
            || ip == "2001:db8::10".parse::<IpAddr>().unwrap()
    }

    #[test]
    fn a_specific_listener_is_reached_by_its_own_address_only() {
        let own = OwnListeners::new(vec![addr("127.0.0.1:8080")]);
        let reached = |t: &str| own.reached_by_with(addr(t), local);
        assert_eq!(reached("127.0.0.1:8080"), Some(addr("127.0.0.1:8080")));
        assert_eq!(
            reached("[::ffff:127.0.0.1]:8080"),
            Some(addr("127.0.0.1:8080"))
        );
        assert_eq!(reached("0.0.0.0:8080"), Some(addr("127.0.0.1:8080")));
        assert_eq!(reached("127.0.0.1:8081"), None);
        assert_eq!(reached("127.0.0.2:8080"), None);
        assert_eq!(reached("192.0.2.10:8080"), None);
        assert_eq!(reached("[::1]:8080"), None);
    }

    #[test]
    fn a_wildcard_listener_is_reached_by_every_local_address_of_its_family() {
        let own = OwnListeners::new(vec![addr("0.0.0.0:80"), addr("[::]:8443")]);
        let reached = |t: &str| own.reached_by_with(addr(t), local);
        for target in [
            "127.0.0.1:80",
            "127.1.2.3:80",
            "192.0.2.10:80",
            "0.0.0.0:80",
        ] {
            assert_eq!(reached(target), Some(addr("0.0.0.0:80")), "{target}");
        }
        assert_eq!(reached("[::1]:8443"), Some(addr("[::]:8443")));
        assert_eq!(reached("[2001:db8::10]:8443"), Some(addr("[::]:8443")));
        assert_eq!(reached("192.0.2.99:80"), None, "not a local address");
        assert_eq!(reached("127.0.0.1:81"), None, "another port");
        assert_eq!(reached("[::1]:80"), None, "the IPv4 wildcard");
        assert_eq!(reached("127.0.0.1:8443"), None, "the IPv6 wildcard");
    }

    #[test]
    fn the_real_host_knows_its_loopback_addresses() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("0.0.0.0".parse().unwrap()));
        assert!(!is_local_address("192.0.2.1".parse().unwrap()));
        assert!(!is_local_address("224.0.0.1".parse().unwrap()));
    }

    fn request(via: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for value in via {
            req.append_header("via", *value).unwrap();
        }
        req
    }

    #[test]
    fn a_request_marked_by_proxyd_is_recognised_among_other_via_elements() {
        assert!(!passed_through(&request(&[])));
        assert!(!passed_through(&request(&[
            "1.1 varnish",
            "1.0 fred, 1.1 p.example (x)"
        ])));
        assert!(!passed_through(&request(&["securely-proxyd"])));
        assert!(passed_through(&request(&["1.1 securely-proxyd"])));
        assert!(passed_through(&request(&[
            "1.0 fred,1.1   Securely-Proxyd (dev)"
        ])));
        assert!(passed_through(&request(&[
            "1.1 varnish",
            "HTTP/1.1 securely-proxyd"
        ])));
    }
}
