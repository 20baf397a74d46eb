//! Queue load: pushes and reserves (then acks) over gRPC on queued's socket, calls the
//! server refused without doing them sent again, as gRPC clients do.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use securely_proto::queue::queue_client::QueueClient;
use securely_proto::queue::{AckRequest, PushRequest, ReserveRequest};

use super::Shared;

/// The queue the load uses.
pub const QUEUE: &str = "load";
/// Pause between retries of a call the server refused without doing it.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// A queue client whose channel reconnects by itself after the server closes it.
fn client(shared: &Shared) -> Result<QueueClient<tonic::transport::Channel>, String> {
    let socket = shared.queue_socket.display();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{socket}"))
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(30));
    Ok(QueueClient::new(endpoint.connect_lazy()))
}

/// Whether a call may be sent again, as gRPC clients do transparently: the server said
/// UNAVAILABLE (it is handing over; nothing was done), the stream was refused by the
/// server's HTTP/2 GOAWAY (never processed), the connection closed before the call was
/// sent on it (hyper's "canceled"), or the connection broke under the call (an old
/// instance exiting after its drain: every call it answers is complete, so a broken one
/// was not carried out). Were a retried call ever carried out twice, the duplicate check
/// in [`super::Load::finish`] would report it.
fn retryable(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let broken = error.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        });
        if broken
            || error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
            || format!("{error:?}").contains("GoAway(")
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// Sends `call` until it is carried out (or fails for good, reported as `what`); calls
/// the server refused without doing anything are sent again.
async fn until_done<T, F, Fut>(shared: &Shared, what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(answer) => return Some(answer),
            Err(status) if retryable(&status) => {
                shared
                    .counters
                    .queue_retries
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(status) => {
                shared.fail(format!("{what}: {status}"));
                return None;
            }
        }
    }
}

pub(super) async fn pusher(shared: Arc<Shared>) {
    let Ok(client) = client(&shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    let mut next = 0u64;
    while shared.running() {
        next += 1;
        let request = PushRequest {
            queue: QUEUE.into(),
            payload: next.to_be_bytes().to_vec(),
            delay_seconds: 0,
            max_tries: 0,
            ..Default::default()
        };
        let pushed = until_done(&shared, "queue push", || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.push(request).await }
        })
        .await;
        if pushed.is_some() {
            shared.pushed.lock().unwrap().push(next);
        }
    }
}

pub(super) async fn reserver(shared: Arc<Shared>) {
    let Ok(client) = client(&shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    while shared.running() {
        reserve_one(&client, 1, &shared).await;
    }
}

/// Reserves and acknowledges one job, waiting up to `wait_seconds`; false when the queue
/// stayed empty.
async fn reserve_one(
    client: &QueueClient<tonic::transport::Channel>,
    wait_seconds: u64,
    shared: &Shared,
) -> bool {
    let request = ReserveRequest {
        queue: QUEUE.into(),
        timeout_seconds: 60,
        wait_seconds,
        ..Default::default()
    };
    let reserved = until_done(shared, "queue reserve", || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            match client.reserve(request).await {
                Ok(job) => Ok(Some(job.into_inner())),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                Err(status) => Err(status),
            }
        }
    })
    .await;
    let job = match reserved {
        Some(Some(job)) => job,
        Some(None) => return false,
        None => return true,
    };
    let payload = u64::from_be_bytes(job.payload.as_slice().try_into().unwrap_or_default());
    let what = format!("queue ack of job {}", job.id);
    let acked = until_done(shared, &what, || {
        let mut client = client.clone();
        let request = AckRequest {
            id: job.id,
            attempt: job.attempt,
        };
        async move { client.ack(request).await }
    })
    .await;
    if acked.is_some() {
        shared.delivered.lock().unwrap().push(payload);
    }
    true
}

/// Reserves whatever is left on the queue.
pub(super) async fn reserve_rest(shared: &Shared) {
    let Ok(client) = client(shared) else {
        shared.fail("queue: cannot connect".into());
        return;
    };
    while reserve_one(&client, 0, shared).await {}
}
