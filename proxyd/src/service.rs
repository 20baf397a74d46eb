//! The pingora service that serves HTTP: pingora's proxy service, wrapped so that proxyd
//! decides two things pingora would otherwise decide itself.
//!
//! * Which sockets it listens on: before the proxy builds its endpoints, the wrapper puts
//!   the already-bound sockets into pingora's listen-fd table (see [`crate::listeners`]).
//! * When it stops accepting: the proxy watches proxyd's stop switch instead of pingora's
//!   shutdown broadcast, so proxyd can stop accepting and drain in-flight requests while
//!   pingora's main loop still runs (see [`crate::drain`]).

use std::sync::Arc;

use pingora::proxy::{HttpProxy, http_proxy_service_with_name};
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::oneshot;

use crate::listeners::{self, HttpListener};
use crate::proxy::SiteProxy;

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

/// pingora's proxy service plus the sockets it adopts, the switch that stops it and the
/// line on which it reports failing to start.
pub struct ProxyService {
    inner: Service<HttpProxy<SiteProxy>>,
    listeners: Vec<HttpListener>,
    stop: ShutdownWatch,
    failure: Option<oneshot::Sender<ServiceError>>,
}

impl ProxyService {
    /// An HTTP/1.1 proxy for `proxy` on `listeners`, accepting until `stop` turns true; a
    /// failure to start is sent on `failure` (the control plane then stops proxyd).
    ///
    /// h2c (cleartext HTTP/2) stays off, as pingora's `HttpServerOptions` default it: pingora
    /// detects h2c by reading the 24-byte HTTP/2 preface before anything else, so an HTTP/1
    /// request shorter than that (a bare `GET / HTTP/1.0`) would wait for bytes that never
    /// come instead of being answered.
    pub fn new(
        conf: &Arc<ServerConf>,
        proxy: SiteProxy,
        listeners: Vec<HttpListener>,
        stop: ShutdownWatch,
        failure: oneshot::Sender<ServiceError>,
    ) -> Self {
        let mut inner = http_proxy_service_with_name(conf, proxy, SERVICE_NAME);
        for listener in &listeners {
            inner.add_tcp(&listener.key());
        }
        Self {
            inner,
            listeners,
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

    use securely_core::drain::InFlight;
    use tokio::sync::watch;

    use super::*;
    use crate::routing::Routes;

    #[tokio::test]
    async fn without_a_listen_fd_table_the_proxy_does_not_start_and_says_why() {
        let listener = HttpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = listener.addr();
        let (failure, failed) = oneshot::channel();
        let (_stop, stopping) = watch::channel(false);
        let mut service = ProxyService::new(
            &Arc::new(ServerConf::default()),
            SiteProxy::new(Arc::new(Routes::default()), InFlight::new()),
            vec![listener],
            stopping,
            failure,
        );
        let (ready, _) = watch::channel(false);
        let started = tokio::time::timeout(
            std::time::Duration::from_secs(5),
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
    }
}
