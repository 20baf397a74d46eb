//! gRPC on Unix sockets: serving (with health and reflection on every socket), connecting,
//! and authorising mutating calls by the caller's credentials.

use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Status};

use crate::drain::InFlight;

/// How long a client waits to connect; a daemon that restarts keeps its socket (the
/// supervisor holds it), so a connection waits in the backlog meanwhile.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the RPC server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be used.
    #[error("gRPC listener: {0}")]
    Listener(#[from] std::io::Error),
    /// Reflection could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// tonic failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// After a stop, how long connections left without a call get to close cleanly before
/// they are cut (an idle client that never answers HTTP/2's closing ping would otherwise
/// hold the server open).
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_millis(200);

/// A gRPC server running on its own task, counting its calls so that a graceful stop
/// waits for the calls in flight and not a moment longer.
#[derive(Debug)]
pub struct RpcServer {
    task: JoinHandle<Result<(), ServeError>>,
    stop: Option<oneshot::Sender<()>>,
    calls: Arc<InFlight>,
}

impl RpcServer {
    /// Starts serving `routes` (plus health and reflection) on `listener`.
    pub fn start(listener: StdUnixListener, routes: Routes) -> Self {
        let calls = InFlight::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_counted(listener, routes, calls.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            task,
            stop: Some(stop),
            calls,
        }
    }

    /// Calls being answered now.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.count()
    }

    /// Resolves if the server ends by itself (an error: it should run until stopped).
    pub async fn ended(&mut self) -> String {
        match (&mut self.task).await {
            Ok(Ok(())) => "the gRPC server ended on its own".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the gRPC server task failed: {e}"),
        }
    }

    /// Stops accepting, lets the calls in flight finish (until `deadline`), then closes
    /// the connections that are left.
    pub async fn stop(self, deadline: Instant) {
        self.stop_within(deadline, std::future::pending()).await;
    }

    /// [`RpcServer::stop`], cut short (calls in flight cancelled) when `cut_short`
    /// resolves first, e.g. on a fast shutdown request during the drain.
    pub async fn stop_within(mut self, deadline: Instant, cut_short: impl Future<Output = ()>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let calls_done = async {
            self.calls.idle().await;
            tokio::time::sleep(IDLE_CLOSE_GRACE).await;
        };
        tokio::select! {
            ended = &mut self.task => {
                if let Ok(Err(e)) = ended {
                    tracing::warn!("gRPC server stopped with an error: {e}");
                }
            }
            () = calls_done => self.task.abort(),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(calls = self.calls.count(), "grace period over; cutting gRPC calls short");
                self.task.abort();
            }
            () = cut_short => self.task.abort(),
        }
    }

    /// Stops at once, cutting calls in flight.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Serves `routes` plus `grpc.health.v1.Health` and reflection on an (inherited or
/// freshly bound) Unix listener until `shutdown` resolves; in-flight calls then finish.
/// Prefer [`RpcServer`], which bounds the stop.
pub async fn serve(
    listener: StdUnixListener,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_counted(listener, routes, InFlight::new(), shutdown).await
}

async fn serve_counted(
    listener: StdUnixListener,
    routes: Routes,
    calls: Arc<InFlight>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(securely_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = routes.add_service(health).add_service(reflection);
    Server::builder()
        .layer(CountCalls { calls })
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// A tower layer counting the calls being answered.
#[derive(Debug, Clone)]
struct CountCalls {
    calls: Arc<InFlight>,
}

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            calls: self.calls.clone(),
        }
    }
}

/// A service whose calls are counted in flight until their response is ready.
#[derive(Debug, Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<InFlight>,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = self.calls.enter();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(guard);
            response
        })
    }
}

/// Connects to the gRPC server on a Unix socket.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    connect_with(path, None).await
}

/// Connects to the gRPC server on a Unix socket; every call on the channel fails with
/// DEADLINE_EXCEEDED after `call_timeout` when given.
pub async fn connect_with(
    path: &Path,
    call_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    let mut endpoint = Endpoint::from_shared(format!("unix://{}", path.display()))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(timeout) = call_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint.connect().await
}

/// Who may make mutating calls: root, the user the stack runs as, the configured user,
/// and members of the configured group (so `securelyctl` works for them without root,
/// as the sockets are group-accessible).
#[derive(Debug, Clone)]
pub struct Access {
    allowed_uids: Vec<u32>,
    group: Option<nix::unistd::Gid>,
}

impl Access {
    /// Root and the effective user of this process, plus `user` and members of `group`
    /// when the settings name them.
    pub fn new(user: Option<&str>, group: Option<&str>) -> Self {
        let mut allowed_uids = vec![0, nix::unistd::geteuid().as_raw()];
        if let Some(Ok(Some(u))) = user.map(nix::unistd::User::from_name) {
            allowed_uids.push(u.uid.as_raw());
        }
        allowed_uids.dedup();
        let group = match group.map(nix::unistd::Group::from_name) {
            Some(Ok(Some(g))) => Some(g.gid),
            _ => None,
        };
        Self {
            allowed_uids,
            group,
        }
    }

    /// Whether `uid` (whose primary group is `gid`) belongs to the configured group.
    fn in_group(&self, uid: u32, gid: u32) -> bool {
        let Some(group) = self.group else {
            return false;
        };
        if gid == group.as_raw() {
            return true;
        }
        let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, user.gid)
            .map(|groups| groups.contains(&group))
            .unwrap_or(false)
    }

    /// Checks that the caller of `request` may mutate state.
    pub fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        match cred {
            Some(cred) if self.allowed_uids.contains(&cred.uid()) => Ok(()),
            Some(cred) if self.in_group(cred.uid(), cred.gid()) => Ok(()),
            Some(cred) => Err(Status::permission_denied(format!(
                "uid {} may not change this daemon (allowed: root, the securely user and its group)",
                cred.uid()
            ))),
            None => Err(Status::permission_denied(
                "caller credentials unavailable; mutating calls need a Unix socket",
            )),
        }
    }
}
