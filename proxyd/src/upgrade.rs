//! WebSockets, and any other HTTP/1.1 upgrade (`Upgrade:` answered `101 Switching
//! Protocols`).
//!
//! pingora relays the handshake as it relays any request (proxyd adds its forwarding
//! headers; `Upgrade` and `Connection: upgrade` go on to the backend), and once the
//! backend answers 101 it passes bytes both ways, unframed, until one side closes: a
//! close frame travels like any other bytes, and a side's end of the TCP connection ends
//! the other (its final bytes, the closing handshake's included, delivered first).
//!
//! proxyd changes two things for upgrades:
//!
//! * no idle timeout in either direction once upgraded. pingora would cut a client
//!   silent for 60 s (its read timeout) and a backend silent for
//!   [`crate::proxy::UPSTREAM_READ_TIMEOUT`]; a development server's hot-reload socket is
//!   silent on both sides until a file changes. The wait for the backend's answer to the
//!   handshake is not bounded by proxyd either (the upstream timeout cannot be changed
//!   after it is set): the client's own handshake timeout bounds it;
//! * an upgraded connection is no longer a request in flight but a tunnel (counted
//!   apart): a drain does not hold kept-alive connections back for it, and waits for it
//!   as for any open connection, until it ends or the grace period does (see
//!   [`crate::connections`]).

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

/// Whether the request asks for an upgrade that proxyd passes on (HTTP/1.1 with an
/// `Upgrade` header).
pub fn requested(session: &Session) -> bool {
    session.downstream_session.is_upgrade_req()
}

/// Lifts the backend's idle timeout for an upgrade request (see the module's
/// documentation).
pub fn unbounded(peer: &mut HttpPeer) {
    peer.options.read_timeout = None;
}

/// Whether `response` completes the client's upgrade handshake; if it does, the client's
/// idle timeout is lifted too.
pub fn switching(session: &mut Session, response: &ResponseHeader) -> bool {
    let switching = session.downstream_session.is_upgrade(response) == Some(true);
    if switching {
        session.downstream_session.set_read_timeout(None);
    }
    switching
}
