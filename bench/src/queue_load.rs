//! `securely-queue-load`: the load client of `bench/queue.sh`.
//!
//! It drives either securely-queued (gRPC on its Unix socket) or beanstalkd (its text
//! protocol on TCP) the same way, so both servers face the same client:
//!
//! 1. N pushes (`Push` / `put`), then
//! 2. N reserve + ack (`Reserve` + `Ack` / `reserve-with-timeout` + `delete`).
//!
//! Every caller is strictly request/response (no pipelining). With `--concurrency 1` (the
//! default) this is the sequential client of the peers' `bs_client.py`; with `-C C`, C
//! callers run at once: C streams over one HTTP/2 connection for queued, C TCP connections
//! for beanstalkd. The phases do not overlap. One JSON line goes to stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{AckRequest, PushRequest, ReserveRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// Jobs per second of a durable queue: N pushes, then N reserve+ack.
#[derive(Debug, Parser)]
#[command(name = "securely-queue-load", version, about, long_about = None)]
struct Args {
    /// securely-queued's gRPC socket (`<runtime_dir>/queued.sock`).
    #[arg(long, value_name = "PATH", conflicts_with = "beanstalkd")]
    socket: Option<PathBuf>,
    /// A beanstalkd server instead, HOST:PORT (loopback only).
    #[arg(long, value_name = "HOST:PORT")]
    beanstalkd: Option<String>,
    /// Jobs to push, then to reserve and ack.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    n: usize,
    /// Payload bytes per job.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The queue (beanstalkd: tube) to use.
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Callers running at once.
    #[arg(short = 'C', long, default_value_t = 1)]
    concurrency: usize,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// One caller's connection to the server under test.
enum Conn {
    Grpc {
        client: QueueClient<Channel>,
        queue: String,
    },
    Beanstalk {
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
        line: String,
    },
}

impl Conn {
    async fn beanstalk(addr: &str, tube: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to beanstalkd at {addr}"))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = Conn::Beanstalk {
            reader: BufReader::new(r),
            writer: w,
            line: String::new(),
        };
        for cmd in [
            format!("use {tube}"),
            format!("watch {tube}"),
            "ignore default".to_string(),
        ] {
            let resp = conn.bs_command(cmd.as_bytes(), None).await?;
            if !(resp.starts_with("USING") || resp.starts_with("WATCHING")) {
                bail!("beanstalkd answered {resp:?} to {cmd:?}");
            }
        }
        Ok(conn)
    }

    /// Sends one beanstalkd command (and body) and reads the reply's first line.
    async fn bs_command(&mut self, cmd: &[u8], body: Option<&[u8]>) -> Result<String> {
        let Conn::Beanstalk {
            reader,
            writer,
            line,
        } = self
        else {
            unreachable!("beanstalkd command on a gRPC connection")
        };
        let mut buf = Vec::with_capacity(cmd.len() + body.map_or(0, |b| b.len() + 4) + 2);
        buf.extend_from_slice(cmd);
        buf.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            buf.extend_from_slice(body);
            buf.extend_from_slice(b"\r\n");
        }
        writer.write_all(&buf).await?;
        line.clear();
        if reader.read_line(line).await? == 0 {
            bail!("beanstalkd closed the connection");
        }
        Ok(line.trim_end().to_string())
    }

    async fn push(&mut self, payload: &[u8]) -> Result<u64> {
        match self {
            Conn::Grpc { client, queue } => {
                let reply = client
                    .push(PushRequest {
                        queue: queue.clone(),
                        payload: payload.to_vec(),
                        delay_seconds: 0,
                        max_tries: 0,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow!("Push: {:?}: {}", s.code(), s.message()))?;
                Ok(reply.into_inner().id)
            }
            Conn::Beanstalk { .. } => {
                let cmd = format!("put 1024 0 60 {}", payload.len());
                let resp = self.bs_command(cmd.as_bytes(), Some(payload)).await?;
                resp.strip_prefix("INSERTED ")
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| anyhow!("put: beanstalkd answered {resp:?}"))
            }
        }
    }

    /// Reserves one job (waiting up to 1 s for one) and returns its id, attempt (beanstalkd:
    /// 0) and payload length.
    async fn reserve(&mut self) -> Result<(u64, u32, usize)> {
        match self {
            Conn::Grpc { client, queue } => {
                let job = client
                    .reserve(ReserveRequest {
                        queue: queue.clone(),
                        timeout_seconds: 60,
                        wait_seconds: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow!("Reserve: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                Ok((job.id, job.attempt, job.payload.len()))
            }
            Conn::Beanstalk { .. } => {
                let resp = self.bs_command(b"reserve-with-timeout 1", None).await?;
                let mut parts = resp.split(' ');
                let (Some("RESERVED"), Some(id), Some(len)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    bail!("reserve: beanstalkd answered {resp:?}");
                };
                let id: u64 = id.parse()?;
                let len: usize = len.parse()?;
                let Conn::Beanstalk { reader, .. } = self else {
                    unreachable!()
                };
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body).await?;
                Ok((id, 0, len))
            }
        }
    }

    /// Acknowledges the reservation `attempt` of job `id` (as a worker would).
    async fn ack(&mut self, id: u64, attempt: u32) -> Result<()> {
        match self {
            Conn::Grpc { client, .. } => {
                client
                    .ack(AckRequest { id, attempt })
                    .await
                    .map_err(|s| anyhow!("Ack {id}: {:?}: {}", s.code(), s.message()))?;
                Ok(())
            }
            Conn::Beanstalk { .. } => {
                let resp = self
                    .bs_command(format!("delete {id}").as_bytes(), None)
                    .await?;
                if resp != "DELETED" {
                    bail!("delete {id}: beanstalkd answered {resp:?}");
                }
                Ok(())
            }
        }
    }
}

/// Per-operation latencies of one phase, across callers.
#[derive(Default)]
struct Phase {
    wall: Duration,
    lat: Vec<Duration>,
}

impl Phase {
    fn json(&self, name: &str, n: usize) -> String {
        let mut lat = self.lat.clone();
        lat.sort();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() - 1) as f64 * p).round() as usize;
            lat[i].as_secs_f64() * 1e3
        };
        let secs = self.wall.as_secs_f64();
        format!(
            "\"{name}_s\": {secs:.4}, \"{name}_jobs_per_s\": {:.1}, \"{name}_p50_ms\": {:.3}, \
             \"{name}_p99_ms\": {:.3}, \"{name}_max_ms\": {:.3}",
            n as f64 / secs,
            pct(0.5),
            pct(0.99),
            pct(1.0),
        )
    }
}

/// Runs `per_caller[i]` operations on each connection at once; `op` gets the connection.
async fn run_phase<F>(conns: Vec<Conn>, per_caller: &[usize], op: F) -> Result<(Vec<Conn>, Phase)>
where
    F: for<'a> Fn(&'a mut Conn) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (caller, (mut conn, count)) in conns.into_iter().zip(per_caller.to_vec()).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                op(&mut conn)
                    .await
                    .with_context(|| format!("caller {caller}, operation {i} of {count}"))?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>((conn, lat))
        }));
    }
    let mut conns = Vec::new();
    let mut phase = Phase::default();
    for task in tasks {
        let (conn, lat) = task.await??;
        conns.push(conn);
        phase.lat.extend(lat);
    }
    phase.wall = start.elapsed();
    Ok((conns, phase))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.concurrency == 0 || a.n == 0 {
        bail!("-n and --concurrency must be at least 1");
    }
    let mut conns = Vec::new();
    match (&a.socket, &a.beanstalkd) {
        (Some(path), None) => {
            // One connection (HTTP/2), shared by every caller.
            let channel = securely_core::rpc::connect(path)
                .await
                .with_context(|| format!("connecting to {}", path.display()))?;
            for _ in 0..a.concurrency {
                conns.push(Conn::Grpc {
                    client: QueueClient::new(channel.clone()),
                    queue: a.queue.clone(),
                });
            }
        }
        (None, Some(addr)) => {
            let ip = addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']))
                .unwrap_or(addr);
            if !ip
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            {
                bail!("refusing non-loopback beanstalkd address {addr}");
            }
            for _ in 0..a.concurrency {
                conns.push(Conn::beanstalk(addr, &a.queue).await?);
            }
        }
        _ => bail!("give exactly one of --socket PATH and --beanstalkd HOST:PORT"),
    }
    let per_caller: Vec<usize> = (0..a.concurrency)
        .map(|i| a.n / a.concurrency + usize::from(i < a.n % a.concurrency))
        .collect();

    static PAYLOAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let size = a.size;
    PAYLOAD.get_or_init(|| vec![b'x'; size]);

    let (conns, push) = run_phase(conns, &per_caller, |conn| {
        Box::pin(async move {
            conn.push(PAYLOAD.get().expect("payload")).await?;
            Ok(())
        })
    })
    .await
    .context("push phase")?;

    let (_conns, reserve_ack) = run_phase(conns, &per_caller, |conn| {
        Box::pin(async move {
            let (id, attempt, len) = conn.reserve().await?;
            let want = PAYLOAD.get().expect("payload").len();
            if len != want {
                bail!("job {id}: payload of {len} bytes, pushed {want}");
            }
            conn.ack(id, attempt).await
        })
    })
    .await
    .context("reserve+ack phase")?;

    let server = if a.socket.is_some() {
        "securely-queued"
    } else {
        "beanstalkd"
    };
    println!(
        "{{\"label\": \"{}\", \"server\": \"{server}\", \"n\": {}, \"size\": {}, \"concurrency\": {}, {}, {}}}",
        a.label.replace(['"', '\\'], "_"),
        a.n,
        a.size,
        a.concurrency,
        push.json("push", a.n),
        reserve_ack.json("reserve_ack", a.n),
    );
    Ok(())
}
