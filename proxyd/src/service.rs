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

use crate::listeners::{self, HttpListener};
use crate::proxy::SiteProxy;

/// The service's name in pingora's logs and thread names.
const SERVICE_NAME: &str = "securely-proxyd";

/// pingora's proxy service plus the sockets it adopts and the switch that stops it.
pub struct ProxyService {
    inner: Service<HttpProxy<SiteProxy>>,
    listeners: Vec<HttpListener>,
    stop: ShutdownWatch,
}

impl ProxyService {
    /// An HTTP/1.1 proxy for `proxy` on `listeners`, accepting until `stop` turns true.
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
    ) -> Self {
        let mut inner = http_proxy_service_with_name(conf, proxy, SERVICE_NAME);
        for listener in &listeners {
            inner.add_tcp(&listener.key());
        }
        Self {
            inner,
            listeners,
            stop,
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
        match &fds {
            Some(table) => listeners::hand_over(table, listeners),
            None => tracing::error!(
                "pingora passed no listen-fd table; the proxy cannot adopt its sockets"
            ),
        }
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
