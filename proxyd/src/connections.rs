//! The proxy's client connections, counted so that a graceful stop waits for them.
//!
//! Counting requests alone misses a connection that has been accepted but whose request
//! has not arrived yet. When its accept loops end, pingora calls the app's `cleanup`,
//! which for its HTTP proxy aborts every session waiting in `read_request()`: such a
//! connection, accepted a moment before the stop, would be closed without an answer, and
//! the drain, seeing no request in flight, would not even wait for it.
//!
//! That abort is also the one place where proxyd closes a kept-alive connection on its
//! own, and a client that has sent a request on it sees it fail: HTTP/1 cannot tell "I
//! closed before your request came" from "I lost your request", and a load generator
//! like wrk never resends (RFC 9112 9.3.1 only allows it). So the abort must hit only
//! connections whose client has really gone quiet, never one that has just been answered
//! and is sending its next request.
//!
//! [`DrainAwareApp`] wraps pingora's app (the proxy) and keeps [`Connections`]:
//!
//! * every connection counts as open from the moment it reaches the app until it ends
//!   (all its requests, keep-alive reuse included: for HTTP/1 pingora's app serves them
//!   all before it returns);
//! * until its client's first bytes are readable, it also counts as awaiting them; only
//!   then is it handed to pingora, whose read of the request header prefers bytes already
//!   there over the abort, even during shutdown;
//! * once the stop switch is on, every response is written with `Connection: close` (see
//!   [`crate::proxy`]), and a request read after it is answered so too (pingora turns
//!   keep-alive off): a connection that was busy at the stop ends after its response,
//!   however slow the backend;
//! * `cleanup` waits until no connection awaits its first bytes, then until no request
//!   is in flight: a request read before the stop whose response header went out before
//!   it (a long download) still ends with its connection kept alive. An upgraded
//!   connection (a WebSocket) is no longer a request (see [`crate::upgrade`]): it does
//!   not hold this back, and is never waiting for a request, so the abort below leaves
//!   it alone. From then on no
//!   response can leave a connection waiting for another request, and every kept-alive
//!   connection gets [`KEEPALIVE_CLOSE_WINDOW`] more to bring one (answered, then closed:
//!   HAProxy's `idle-close-on-response`). Only then does pingora abort its waiting
//!   sessions: connections that have been quiet for the whole window;
//! * once pingora's service has returned (accept loops ended, cleanup done),
//!   [`Connections::drained`] resolves when the last connection ends.
//!
//! A client that connects and stays silent keeps its connection, and so the drain,
//! waiting, and so do a request that never ends (a stream) and a WebSocket: the drain is
//! bounded by the grace period (and cut short by a fast stop), and while serving a
//! silent new connection is dropped after [`FIRST_BYTES_TIMEOUT`].
//!
//! A connection is counted from the moment pingora's accept loop takes it: the loop asks
//! [`AcceptCounter`] (pingora's connection filter) before it spawns the connection's task,
//! and `cleanup`, which runs once every accept loop has ended, first waits until every
//! connection so accepted has reached the app. Without that, a connection whose task had
//! not run yet when the last request ended would be dropped with the runtime, unanswered.
//! A connection that never reaches the app is waited for at most [`HANDSHAKE_WAIT`]. A
//! connection on a TLS listener reaches it before its handshake, which the app does
//! itself (see [`crate::tls::accept`]): one whose handshake fails is counted to its end
//! like any other, and one in its handshake counts as awaiting its first bytes.
//!
//! Limits: a request header whose first
//! bytes came before pingora's abort but whose rest had not arrived yet is still cut off
//! by it (clients send a request header in one piece, so neither is seen in practice);
//! and a client that sends its next request exactly as the window ends, after a whole
//! window of silence, races the abort, as with any server that closes idle connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use securely_core::drain::InFlight;
use tokio::sync::watch;

use crate::tls::accept::TlsAcceptor;

/// How long a new connection may stay silent before proxyd drops it: pingora's own wait
/// for the first request on a connection (its default keep-alive timeout).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// During a drain, once no request is in flight, how long kept-alive connections get to
/// bring one more request (answered, then closed) before the idle ones are closed.
pub const KEEPALIVE_CLOSE_WINDOW: Duration = Duration::from_secs(1);

/// During a drain, how long connections accepted before the stop get to reach the app
/// (their task to run): far above what a live client needs.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// The proxy's client connections, shared by the app and the control plane.
#[derive(Debug)]
pub struct Connections {
    /// Connections pingora's accept loops have taken (counted before their task spawns).
    accepted: AtomicU64,
    /// Of those, how many have reached the app.
    reached_app: watch::Sender<u64>,
    open: Arc<InFlight>,
    awaiting_first_bytes: Arc<InFlight>,
    service_ended: watch::Sender<bool>,
}

impl Connections {
    /// No connection yet; the service runs.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: AtomicU64::new(0),
            reached_app: watch::channel(0).0,
            open: InFlight::new(),
            awaiting_first_bytes: InFlight::new(),
            service_ended: watch::channel(false).0,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.count()
    }

    /// Connections whose client has not sent anything yet.
    pub fn awaiting_first_bytes(&self) -> usize {
        self.awaiting_first_bytes.count()
    }

    /// The connection filter that counts every connection pingora's accept loops take.
    pub fn accept_counter(self: &Arc<Self>) -> Arc<AcceptCounter> {
        Arc::new(AcceptCounter(self.clone()))
    }

    /// Records that one accepted connection has reached the app.
    fn count_reached_app(&self) {
        self.reached_app.send_modify(|reached| *reached += 1);
    }

    /// Resolves once every connection accepted so far has reached the app.
    async fn all_accepted_reached_app(&self) {
        let accepted = self.accepted.load(Ordering::Acquire);
        let mut reached = self.reached_app.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = reached.wait_for(|reached| *reached >= accepted).await;
    }

    /// Records that pingora's service has returned: its accept loops have ended and its
    /// cleanup is done, so no connection will be added. Returns a guard that records it
    /// when dropped, so that a service that ends early (or panics) still counts.
    pub fn end_of_service(self: &Arc<Self>) -> ServiceEnd {
        ServiceEnd(self.clone())
    }

    /// Counts one connection open until the guard is dropped, as the app does.
    #[cfg(test)]
    pub fn count_one_open(&self) -> securely_core::drain::InFlightGuard {
        self.open.enter()
    }

    /// Resolves once the service has returned and every connection has ended.
    pub async fn drained(&self) {
        let mut ended = self.service_ended.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = ended.wait_for(|ended| *ended).await;
        self.open.idle().await;
    }
}

/// Marks the end of pingora's service when dropped (see [`Connections::end_of_service`]).
#[derive(Debug)]
pub struct ServiceEnd(Arc<Connections>);

impl Drop for ServiceEnd {
    fn drop(&mut self) {
        self.0.service_ended.send_replace(true);
    }
}

/// pingora's connection filter, which its accept loop asks about every connection before
/// it spawns the connection's task: accepts them all, counting them.
#[derive(Debug)]
pub struct AcceptCounter(Arc<Connections>);

#[async_trait::async_trait]
impl ConnectionFilter for AcceptCounter {
    async fn should_accept(&self, _peer: Option<&std::net::SocketAddr>) -> bool {
        self.0.accepted.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// pingora's app `A`, counting its connections in [`Connections`] and holding pingora's
/// cleanup back until every new connection has had its first bytes, no request is in
/// flight, and kept-alive connections have had their window.
pub struct DrainAwareApp<A> {
    inner: Arc<A>,
    connections: Arc<Connections>,
    requests: Arc<InFlight>,
    /// The handshake of connections on TLS listeners.
    tls: Option<Arc<TlsAcceptor>>,
}

impl<A> DrainAwareApp<A> {
    /// `inner`, counting its connections in `connections`; `requests` counts the
    /// requests `inner` serves (from their header to the end of their response).
    pub fn new(inner: A, connections: Arc<Connections>, requests: Arc<InFlight>) -> Self {
        Self {
            inner: Arc::new(inner),
            connections,
            requests,
            tls: None,
        }
    }

    /// The same app, completing the TLS handshake of the connections `tls` serves before
    /// `inner` sees them (a connection counts as awaiting its first bytes until its first
    /// decrypted bytes are there).
    pub fn with_tls(mut self, tls: Option<Arc<TlsAcceptor>>) -> Self {
        self.tls = tls;
        self
    }

    /// Resolves when pingora may abort the sessions waiting for a request: see the
    /// module's documentation.
    async fn quiet(&self) {
        // Every accept loop has ended: a connection accepted just before may not have
        // reached `process_new` yet.
        if tokio::time::timeout(HANDSHAKE_WAIT, self.connections.all_accepted_reached_app())
            .await
            .is_err()
        {
            tracing::warn!("connections accepted before the stop never reached the proxy");
        }
        self.connections.awaiting_first_bytes.idle().await;
        self.requests.idle().await;
        let _ = tokio::time::timeout(KEEPALIVE_CLOSE_WINDOW, self.connections.open.idle()).await;
    }
}

#[async_trait::async_trait]
impl<A> ServerApp for DrainAwareApp<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.connections.open.enter();
        {
            let _awaiting = self.connections.awaiting_first_bytes.enter();
            // Counted only now, so that a drain that saw it reach the app sees it awaiting.
            self.connections.count_reached_app();
            if !first_bytes(&mut stream).await {
                return None;
            }
            if let Some(tls) = self.tls.as_ref().filter(|tls| tls.serves(&stream)) {
                stream = match tls.accept(stream).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!("{e}");
                        return None;
                    }
                };
                // Awaiting still: the first bytes of the request, decrypted.
                if !first_bytes(&mut stream).await {
                    return None;
                }
            }
        }
        // For HTTP/1 this serves every request of the connection and returns None.
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.quiet().await;
        self.inner.cleanup().await;
    }
}

/// Waits (at most [`FIRST_BYTES_TIMEOUT`]) until the client's first bytes can be read;
/// they are read again by whoever reads the stream next (pingora's TCP stream and
/// [`crate::tls::stream::TlsConnection`] keep what they peeked). `false`: the client
/// closed, reset or stayed silent, and the connection is done with.
async fn first_bytes(stream: &mut Stream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.try_peek(&mut first)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            // Closed or reset before sending anything: there is nothing to answer.
            tracing::debug!("connection ended before its first bytes: {e}");
            false
        }
        Err(_) => {
            tracing::debug!("connection silent for {FIRST_BYTES_TIMEOUT:?}; dropped");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drained_once_the_service_ended_and_every_connection_closed() {
        let connections = Connections::new();
        let open = connections.count_one_open();
        let end = connections.end_of_service();
        let waiting = tokio::time::timeout(Duration::from_millis(20), connections.drained());
        assert!(waiting.await.is_err(), "the service still runs");
        drop(end);
        let waiting = tokio::time::timeout(Duration::from_millis(20), connections.drained());
        assert!(waiting.await.is_err(), "a connection is still open");
        drop(open);
        tokio::time::timeout(Duration::from_secs(1), connections.drained())
            .await
            .expect("drained");
    }

    #[tokio::test]
    async fn a_drain_waits_for_accepted_connections_to_reach_the_app() {
        let connections = Connections::new();
        let counter = connections.accept_counter();
        assert!(
            counter.should_accept(None).await,
            "every connection is accepted"
        );
        let waiting = tokio::time::timeout(
            Duration::from_millis(20),
            connections.all_accepted_reached_app(),
        );
        assert!(
            waiting.await.is_err(),
            "the accepted connection has not reached the app"
        );
        connections.count_reached_app();
        tokio::time::timeout(
            Duration::from_secs(1),
            connections.all_accepted_reached_app(),
        )
        .await
        .expect("every accepted connection reached the app");
    }
}
