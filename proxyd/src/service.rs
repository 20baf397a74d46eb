//! The pingora service that serves HTTP: pingora's proxy service, wrapped so that proxyd
//! decides two things pingora would otherwise decide itself.
//!
//! * Which sockets it listens on: before the proxy builds its endpoints, the wrapper puts
//!   the already-bound sockets into pingora's listen-fd table (see [`crate::listeners`]).
//! * When it stops accepting: the proxy watches proxyd's stop switch instead of pingora's
//!   shutdown broadcast, so proxyd can stop accepting and drain its connections while
//!   pingora's main loop still runs (see [`crate::drain`]).
//!
//! The app it runs is pingora's HTTP proxy inside a [`DrainAwareApp`], which counts the
//! connections and holds pingora's cleanup back until every new connection has had its
//! first bytes and the kept-alive ones have had their last chance to send a request (see
//! [`crate::connections`]). The proxy itself closes every connection after its response
//! once the stop switch is on.

use std::sync::Arc;

use pingora::proxy::{HttpProxy, http_proxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::oneshot;

use crate::connections::{Connections, DrainAwareApp};
use crate::listeners::{self, HttpListener};
use crate::proxy::SiteProxy;
use crate::tls::accept::TlsAcceptor;

/// The service's name in pingora's logs and thread names.
const SERVICE_NAME: &str = "securely-proxyd";

/// Why the proxy service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// pingora gave the service no listen-fd table to put the sockets in. The proxy is
    /// not started: it would bind `proxy.listen` by itself, behind the supervisor's back.
    #[error(
        "pingora passed no listen-fd table, so the proxy cannot adopt its sockets; \
         refusing to let pingora bind them itself"
    )]
    NoListenFdTable,
}

/// pingora's proxy service plus the sockets it adopts, the switch that stops it, its
/// connections and the line on which it reports failing to start.
pub struct ProxyService {
    inner: Service<DrainAwareApp<HttpProxy<SiteProxy>>>,
    listeners: Vec<HttpListener>,
    connections: Arc<Connections>,
    stop: ShutdownWatch,
    failure: Option<oneshot::Sender<ServiceError>>,
}

impl ProxyService {
    /// An HTTP/1.1 proxy for `proxy` on `listeners`, accepting until `stop` turns true and
    /// counting its connections in `connections`; a failure to start is sent on `failure`
    /// (the control plane then stops proxyd). The connections `tls` serves (those on the
    /// TLS listeners, which pingora sees as plain TCP ones) are https, with h2 or HTTP/1.1
    /// by ALPN.
    ///
    /// h2c (cleartext HTTP/2) stays off, as pingora's `HttpServerOptions` default it: pingora
    /// detects h2c by reading the 24-byte HTTP/2 preface before anything else, so an HTTP/1
    /// request shorter than that (a bare `GET / HTTP/1.0`) would wait for bytes that never
    /// come instead of being answered.
    pub fn new(
        conf: &Arc<ServerConf>,
        proxy: SiteProxy,
        listeners: Vec<HttpListener>,
        tls: Option<Arc<TlsAcceptor>>,
        stop: ShutdownWatch,
        connections: Arc<Connections>,
        failure: oneshot::Sender<ServiceError>,
    ) -> Self {
        let proxy = proxy.closing_once(stop.clone());
        let requests = proxy.requests();
        let app = DrainAwareApp::new(http_proxy(conf, proxy), connections.clone(), requests)
            .with_tls(tls);
        let mut inner = Service::new(SERVICE_NAME.to_string(), app);
        inner.set_connection_filter(connections.accept_counter());
        for listener in &listeners {
            inner.add_tcp(&listener.key());
        }
        Self {
            inner,
            listeners,
            connections,
            stop,
            failure: Some(failure),
        }
    }
}

#[async_trait::async_trait]
impl ServiceWithDependents for ProxyService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _server_shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        // However this returns, no connection is added after it.
        let _end = self.connections.end_of_service();
        let listeners = std::mem::take(&mut self.listeners);
        let Some(table) = &fds else {
            // Reported before the sockets close, so the control plane names this cause
            // rather than the readiness probe's refused connection.
            if let Some(failure) = self.failure.take() {
                let _ = failure.send(ServiceError::NoListenFdTable);
            }
            drop(listeners);
            return;
        };
        listeners::hand_over(table, listeners);
        // pingora's own shutdown broadcast is deliberately not passed on: proxyd's stop
        // switch is flipped first on every shutdown path (see crate::drain).
        ServiceWithDependents::start_service(
            &mut self.inner,
            fds,
            self.stop.clone(),
            listeners_per_fd,
            ready_notifier,
        )
        .await;
    }

    fn name(&self) -> &str {
        SERVICE_NAME
    }

    fn threads(&self) -> Option<usize> {
        ServiceWithDependents::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        ServiceWithDependents::listen_addresses(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use pingora::server::Fds;
    use securely_core::drain::InFlight;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::connections::KEEPALIVE_CLOSE_WINDOW;
    use crate::routing::{Routes, RoutingTable};
    use crate::sites::Site;

    /// Long enough for anything these tests wait for to happen.
    const PATIENCE: Duration = Duration::from_secs(5);
    /// How long these tests watch for something that must not happen.
    const A_WHILE: Duration = Duration::from_millis(200);
    /// A request for a host no site serves: proxyd answers it 404 itself.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n";
    /// A request for the site `app`, which [`held_backend`] serves.
    const APP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    /// What [`held_backend`] answers, as an HTTP/1.0 server whose body ends when it closes
    /// (proxyd passes it on chunked, a piece as it comes).
    const HELD_RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nheld";
    /// The end of a chunked body.
    const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

    fn service(
        listener: HttpListener,
        routes: Arc<Routes>,
        stop: ShutdownWatch,
        connections: Arc<Connections>,
        failure: oneshot::Sender<ServiceError>,
    ) -> ProxyService {
        ProxyService::new(
            &Arc::new(ServerConf::default()),
            SiteProxy::new(routes, InFlight::new()),
            vec![listener],
            None,
            stop,
            connections,
            failure,
        )
    }

    /// The proxy service running on a listener of its own, as pingora runs it.
    struct Running {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        connections: Arc<Connections>,
        task: JoinHandle<()>,
    }

    impl Running {
        async fn start() -> Self {
            Self::start_routing(Arc::new(Routes::default())).await
        }

        async fn start_routing(routes: Arc<Routes>) -> Self {
            let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.addr();
            let connections = Connections::new();
            let (stop, stopping) = watch::channel(false);
            let (failure, _) = oneshot::channel();
            let mut service = service(listener, routes, stopping, connections.clone(), failure);
            let table: ListenFds = Arc::new(Fds::new().into());
            let task = tokio::spawn(async move {
                let (ready, _) = watch::channel(false);
                let notifier = ServiceReadyNotifier::new(ready);
                service
                    .start_service(Some(table), watch::channel(false).1, 1, notifier)
                    .await;
            });
            crate::probe::http(addr, PATIENCE)
                .await
                .expect("the proxy answers");
            let running = Self {
                addr,
                stop,
                connections,
                task,
            };
            // The probe's connection is closed after its answer.
            running
                .until("the probe's connection ends", |c| c.open() == 0)
                .await;
            running
        }

        async fn until(&self, what: &str, done: impl Fn(&Connections) -> bool) {
            let waiting = async {
                while !done(&self.connections) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(PATIENCE, waiting)
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        }

        /// Flips the stop switch and waits until the listening socket is closed.
        async fn stop_accepting(&self) {
            self.stop.send_replace(true);
            let closed = async {
                while TcpStream::connect(self.addr).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(PATIENCE, closed)
                .await
                .expect("the listener closes");
        }

        async fn drained_within(&self, limit: Duration) -> bool {
            tokio::time::timeout(limit, self.connections.drained())
                .await
                .is_ok()
        }
    }

    /// Reads one response (its head and its Content-Length body) and returns its head.
    async fn response(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        read_until(stream, &mut received, |r| head_and_body(r).is_some()).await;
        head_and_body(&received).unwrap().0
    }

    /// The head of the response in `received`, and how much of its body has arrived,
    /// once the head is complete.
    fn head_and_body(received: &[u8]) -> Option<(String, usize)> {
        let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&received[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        (received.len() >= end + 4 + length).then_some((head, length))
    }

    /// Reads from `stream` into `received` until `done(received)`.
    async fn read_until(
        stream: &mut TcpStream,
        received: &mut Vec<u8>,
        done: impl Fn(&[u8]) -> bool,
    ) {
        let mut chunk = [0u8; 4096];
        let read = async {
            while !done(received) {
                let n = stream.read(&mut chunk).await.expect("a response");
                assert!(n > 0, "closed before the response completed");
                received.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the response comes")
    }

    /// A backend serving one request, HTTP/1.0 style (one connection per request): once
    /// the request has come, it sends the first `at_once` bytes of [`HELD_RESPONSE`] and
    /// says so on the second half; it sends the rest, then closes, when the first half
    /// fires. The routes send `app.test` to it.
    async fn held_backend(
        at_once: usize,
    ) -> (Arc<Routes>, oneshot::Sender<()>, oneshot::Receiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = oneshot::channel::<()>();
        let (requested, on_request) = oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut chunk = [0u8; 1024];
            while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the proxy closed before its request was complete");
                received.extend_from_slice(&chunk[..n]);
            }
            conn.write_all(&HELD_RESPONSE[..at_once]).await.unwrap();
            let _ = requested.send(());
            let _ = released.await;
            conn.write_all(&HELD_RESPONSE[at_once..]).await.unwrap();
        });
        let site = Site::new("app", &addr.to_string(), &[], "test").unwrap();
        let routes = Arc::new(Routes::default());
        routes.publish(RoutingTable::build([&site], "test"));
        (routes, release, on_request)
    }

    /// Whether the server closes `stream` within `limit` (nothing more is sent on it).
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(limit, stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes"),
            Err(_) => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_opened_before_the_stop_is_answered_when_its_request_comes_after() {
        let proxy = Running::start().await;
        // A kept-alive connection, idle after one request.
        let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
        kept.write_all(REQUEST).await.unwrap();
        assert!(response(&mut kept).await.starts_with("HTTP/1.1 404"));
        // A connection whose request has not been sent yet.
        let mut late = TcpStream::connect(proxy.addr).await.unwrap();
        proxy
            .until("both connections", |c| {
                c.open() == 2 && c.awaiting_first_bytes() == 1
            })
            .await;

        proxy.stop_accepting().await;
        assert!(!proxy.drained_within(A_WHILE).await);
        assert!(
            !closed_within(&mut kept, A_WHILE).await,
            "idle connections are dropped only once every new one has had its first bytes"
        );

        late.write_all(REQUEST).await.unwrap();
        let head = response(&mut late).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(
            closed_within(&mut late, PATIENCE).await,
            "no keep-alive after the stop"
        );
        assert!(
            closed_within(&mut kept, PATIENCE).await,
            "the idle one is dropped"
        );
        assert!(proxy.drained_within(PATIENCE).await);
        tokio::time::timeout(PATIENCE, proxy.task)
            .await
            .expect("the service returns")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_response_written_after_the_stop_closes_its_connection_however_late() {
        let (routes, release, requested) = held_backend(0).await;
        let proxy = Running::start_routing(routes).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(APP_REQUEST).await.unwrap();
        requested.await.expect("the request reaches the backend");

        proxy.stop_accepting().await;
        tokio::time::sleep(KEEPALIVE_CLOSE_WINDOW + A_WHILE).await;
        release.send(()).unwrap();
        let mut received = Vec::new();
        read_until(&mut client, &mut received, |r| r.ends_with(LAST_CHUNK)).await;
        let head = String::from_utf8_lossy(&received).to_ascii_lowercase();
        assert!(head.contains(" 200 "), "{head}");
        assert!(
            head.contains("connection: close"),
            "the client is told not to send another request: {head}"
        );
        assert!(closed_within(&mut client, PATIENCE).await);
        assert!(proxy.drained_within(PATIENCE).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_alive_response_ending_late_still_gets_its_next_request_answered() {
        // The head (keep-alive) and half the body leave before the stop.
        let (routes, release, requested) = held_backend(HELD_RESPONSE.len() - 2).await;
        let proxy = Running::start_routing(routes).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(APP_REQUEST).await.unwrap();
        requested.await.expect("the request reaches the backend");
        let mut received = Vec::new();
        read_until(&mut client, &mut received, |r| r.ends_with(b"he\r\n")).await;
        let head = String::from_utf8_lossy(&received).to_ascii_lowercase();
        assert!(head.contains("connection: keep-alive"), "{head}");

        // The rest comes after the window given to kept-alive connections.
        proxy.stop_accepting().await;
        tokio::time::sleep(KEEPALIVE_CLOSE_WINDOW + A_WHILE).await;
        release.send(()).unwrap();
        read_until(&mut client, &mut received, |r| r.ends_with(LAST_CHUNK)).await;

        // Its client sends the next request at once: answered, and then closed.
        client.write_all(REQUEST).await.unwrap();
        let head = response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        assert!(closed_within(&mut client, PATIENCE).await);
        assert!(proxy.drained_within(PATIENCE).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_holds_the_drain_until_it_goes() {
        let proxy = Running::start().await;
        let silent = TcpStream::connect(proxy.addr).await.unwrap();
        proxy.until("the connection", |c| c.open() == 1).await;
        proxy.stop_accepting().await;
        assert!(!proxy.drained_within(A_WHILE).await);
        drop(silent);
        assert!(proxy.drained_within(PATIENCE).await);
    }

    #[tokio::test]
    async fn without_a_listen_fd_table_the_proxy_does_not_start_and_says_why() {
        let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = listener.addr();
        let (failure, failed) = oneshot::channel();
        let (_stop, stopping) = watch::channel(false);
        let connections = Connections::new();
        let routes = Arc::new(Routes::default());
        let mut service = service(listener, routes, stopping, connections.clone(), failure);
        let (ready, _) = watch::channel(false);
        let started = tokio::time::timeout(
            PATIENCE,
            service.start_service(
                None,
                watch::channel(false).1,
                1,
                ServiceReadyNotifier::new(ready),
            ),
        );
        started.await.expect("start_service returns at once");
        assert!(matches!(failed.await, Ok(ServiceError::NoListenFdTable)));
        // Its socket is closed, and pingora did not bind the address itself.
        assert!(std::net::TcpStream::connect(addr).is_err());
        // A drain has nothing to wait for.
        tokio::time::timeout(PATIENCE, connections.drained())
            .await
            .expect("drained at once");
    }
}
