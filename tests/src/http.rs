//! A real HTTP client (hyper, so the Host header is ours to set) and a real backend that
//! echoes what it received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, lowercased names.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

/// How long a test request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `addr` with `Host: host`, over a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    get_on(stream, host, path).await
}

/// `GET path` with `Host: host` on an already connected stream (TCP, or TLS over it).
pub async fn get_on<S>(stream: S, host: &str, path: &str) -> std::io::Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io_err = |e: hyper::Error| std::io::Error::other(e.to_string());
    let work = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io_err)?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .map_err(std::io::Error::other)?;
        let response = sender.send_request(request).await.map_err(io_err)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io_err)?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))?
}

/// A backend on 127.0.0.1 that answers every request with 200 and a body of
/// `name: value` lines: `path` first, then every request header. `/slow/MS` waits MS
/// milliseconds first.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts the backend on a free port.
    pub async fn start() -> Self {
        let (addr, task) = serve_each(|stream| async move {
            let service = hyper::service::service_fn(echo);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
        .await;
        Self { addr, task }
    }
}

/// Listens on a free port of 127.0.0.1 and serves each connection with `serve` on a task
/// of its own; returns the address and the task that accepts (abort it to stop).
pub async fn serve_each<F, Fut>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("backend addr");
    let task = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        }
    });
    (addr, task)
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // `/slow/MS` answers after MS milliseconds: a request that stays in flight.
    if let Some(ms) = request
        .uri()
        .path()
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut body = format!("path: {}\n", request.uri());
    for (name, value) in request.headers() {
        body.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("")));
    }
    Ok(Response::new(Full::new(Bytes::from(body))))
}
