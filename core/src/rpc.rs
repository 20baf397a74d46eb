//! gRPC on Unix sockets: serving (with health and reflection on every socket), connecting,
//! and authorising mutating calls by the caller's credentials.

use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Status};

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

/// Serves `routes` plus `grpc.health.v1.Health` and reflection on an (inherited or
/// freshly bound) Unix listener until `shutdown` resolves; in-flight calls then finish.
pub async fn serve(
    listener: StdUnixListener,
    routes: Routes,
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
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Connects to the gRPC server on a Unix socket.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_shared(format!("unix://{}", path.display()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
}

/// Who may make mutating calls: root, the user the stack runs as, and the configured user.
#[derive(Debug, Clone)]
pub struct Access {
    allowed_uids: Vec<u32>,
}

impl Access {
    /// Root and the effective user of this process, plus `user` when the settings name one.
    pub fn new(user: Option<&str>) -> Self {
        let mut allowed_uids = vec![0, nix::unistd::geteuid().as_raw()];
        if let Some(Ok(Some(u))) = user.map(nix::unistd::User::from_name) {
            allowed_uids.push(u.uid.as_raw());
        }
        allowed_uids.dedup();
        Self { allowed_uids }
    }

    /// Checks that the caller of `request` may mutate state.
    pub fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        match uid {
            Some(uid) if self.allowed_uids.contains(&uid) => Ok(()),
            Some(uid) => Err(Status::permission_denied(format!(
                "uid {uid} may not change this daemon (allowed: root or the securely user)"
            ))),
            None => Err(Status::permission_denied(
                "caller credentials unavailable; mutating calls need a Unix socket",
            )),
        }
    }
}
