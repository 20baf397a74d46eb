//! The `securely.queue.v1.Queue` gRPC service: checks arguments and callers, then hands
//! over to the [`Engine`].
//!
//! Status codes: INVALID_ARGUMENT names the field; NOT_FOUND for an empty queue and for
//! Ack/Fail of a job that is not reserved (acknowledged or failed already, or its
//! reservation expired and the reaper handed it back); UNAVAILABLE when the call did
//! nothing because this instance is handing its tree over or shutting down (a Reserve
//! still waiting then included): retrying is safe, and reaches whichever instance serves
//! next; INTERNAL for storage failures (a write that could not be made durable included).
//!
//! An Ack or Fail that arrives after the deadline but before the reaper has run (it runs
//! at the deadline, so a window of milliseconds) still counts: nobody else holds the job.

use std::sync::Arc;

use securely_core::rpc::Access;
use securely_core::shutdown::Shutdown;
use securely_proto::queue::queue_server::{Queue, QueueServer};
use securely_proto::queue::{
    AckReply, AckRequest, FailReply, FailRequest, FailedChanged, FailedJob, Job, ListFailedReply,
    ListFailedRequest, PushReply, PushRequest, QueueStats, ReleaseReply, ReleaseRequest,
    ReserveRequest, SelectFailed, StatsReply, StatsRequest, TouchReply, TouchRequest,
};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError};
use crate::store::{FailOutcome, FailedChange, FailedSelection, StoreError};
use crate::validate::{self, Invalid, Limits, ValidSelection};

/// Most payload and error bytes in one ListFailed answer, below the 4 MiB a default gRPC
/// client accepts; the contract has no paging, so the rest is counted in the
/// [`OMITTED_HEADER`] response header.
pub const MAX_LIST_FAILED_BYTES: usize = 3 * 1024 * 1024;
/// Response header of ListFailed: failed jobs left out of the answer.
pub const OMITTED_HEADER: &str = "securely-omitted";

/// The queue service.
#[derive(Debug, Clone)]
pub struct QueueService {
    engine: Arc<Engine>,
    limits: Limits,
    access: Access,
    shutdown: Shutdown,
}

impl QueueService {
    /// A service over `engine`; mutating calls are allowed to `access`. `shutdown` is the
    /// daemon's (it words the answers of calls the engine refuses).
    pub fn new(engine: Arc<Engine>, limits: Limits, access: Access, shutdown: Shutdown) -> Self {
        Self {
            engine,
            limits,
            access,
            shutdown,
        }
    }

    /// The tonic service.
    pub fn into_server(self) -> QueueServer<Self> {
        QueueServer::new(self)
    }
}

fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.to_string())
}

impl QueueService {
    /// The gRPC status for an engine error.
    fn status(&self, e: EngineError) -> Status {
        status(e, self.shutdown.requested().is_some())
    }
}

fn status(e: EngineError, shutting_down: bool) -> Status {
    match e {
        EngineError::Store(StoreError::NotReserved(id)) => Status::not_found(format!(
            "job {id} is not reserved (acknowledged or failed already, or its reservation \
             expired and it went back to its queue)"
        )),
        EngineError::Store(e @ StoreError::StaleReservation { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Empty(queue) => Status::not_found(format!("queue {queue} is empty")),
        EngineError::ShuttingDown if shutting_down => Status::unavailable(
            "queued is shutting down; nothing was done: retry against the next instance",
        ),
        EngineError::ShuttingDown => Status::unavailable(
            "queued is handing over to its next instance; nothing was done: retry",
        ),
        e @ (EngineError::Store(_) | EngineError::Log(_)) => {
            tracing::error!("{e}");
            Status::internal(e.to_string())
        }
    }
}

impl QueueService {
    /// Checks a selection of failed jobs and runs `op` on it.
    async fn change_failed<'a, F, Fut>(
        &'a self,
        request: Request<SelectFailed>,
        op: F,
    ) -> Result<Response<FailedChanged>, Status>
    where
        F: FnOnce(&'a Engine, ValidSelection) -> Fut,
        Fut: std::future::Future<Output = Result<FailedChange, EngineError>>,
    {
        self.access.authorize(&request)?;
        let SelectFailed { ids, all, queue } = request.into_inner();
        let selection = validate::failed_selection(ids, all, &queue).map_err(invalid)?;
        let change = op(&self.engine, selection)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(FailedChanged {
            count: change.ids.len() as u64,
            missing: change.missing,
        }))
    }
}

#[tonic::async_trait]
impl Queue for QueueService {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        self.access.authorize(&request)?;
        let push = self.limits.push(request.into_inner()).map_err(invalid)?;
        let id = self
            .engine
            .push(&push.queue, &push.payload, push.delay_ms, push.max_tries)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(PushReply { id }))
    }

    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<Job>, Status> {
        self.access.authorize(&request)?;
        let reserve = self.limits.reserve(request.into_inner()).map_err(invalid)?;
        let job = self
            .engine
            .reserve(&reserve.queues, reserve.timeout_ms, reserve.wait)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(Job {
            id: job.id,
            queue: job.queue,
            payload: job.payload,
            attempt: job.attempt,
            max_tries: job.max_tries,
            created_at_ms: job.created_at_ms,
            reserved_until_ms: job.reserved_until_ms,
        }))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckReply>, Status> {
        self.access.authorize(&request)?;
        let id = validate::job_id(request.get_ref().id).map_err(invalid)?;
        let attempt = Some(request.get_ref().attempt).filter(|a| *a != 0);
        self.engine
            .ack(id, attempt)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(AckReply {}))
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<FailReply>, Status> {
        self.access.authorize(&request)?;
        let FailRequest { id, error, attempt } = request.into_inner();
        let id = validate::job_id(id).map_err(invalid)?;
        let error = validate::error_text(error);
        let attempt = Some(attempt).filter(|a| *a != 0);
        let reply = match self
            .engine
            .fail(id, attempt, &error)
            .await
            .map_err(|e| self.status(e))?
        {
            FailOutcome::Retry { at_ms, .. } => FailReply {
                will_retry: true,
                retry_at_ms: at_ms,
            },
            FailOutcome::Failed => FailReply {
                will_retry: false,
                retry_at_ms: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        self.access.authorize(&request)?;
        let ReleaseRequest {
            id,
            attempt,
            delay_seconds,
        } = request.into_inner();
        let id = validate::job_id(id).map_err(invalid)?;
        let delay_ms = validate::delay_ms(delay_seconds).map_err(invalid)?;
        let attempt = Some(attempt).filter(|a| *a != 0);
        let available_at_ms = self
            .engine
            .release(id, attempt, delay_ms)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(ReleaseReply { available_at_ms }))
    }

    async fn touch(&self, request: Request<TouchRequest>) -> Result<Response<TouchReply>, Status> {
        self.access.authorize(&request)?;
        let TouchRequest {
            id,
            attempt,
            timeout_seconds,
        } = request.into_inner();
        let id = validate::job_id(id).map_err(invalid)?;
        let timeout_ms = self.limits.timeout_ms(timeout_seconds).map_err(invalid)?;
        let attempt = Some(attempt).filter(|a| *a != 0);
        let reserved_until_ms = self
            .engine
            .touch(id, attempt, timeout_ms)
            .map_err(|e| self.status(e))?;
        Ok(Response::new(TouchReply { reserved_until_ms }))
    }

    async fn list_failed(
        &self,
        request: Request<ListFailedRequest>,
    ) -> Result<Response<ListFailedReply>, Status> {
        // Failed jobs carry their payloads: as private as Reserve.
        self.access.authorize(&request)?;
        let queue = validate::queue_filter(&request.get_ref().queue).map_err(invalid)?;
        let list = self
            .engine
            .list_failed(queue, MAX_LIST_FAILED_BYTES)
            .map_err(|e| self.status(e))?;
        let jobs = list
            .jobs
            .into_iter()
            .map(|job| FailedJob {
                id: job.record.id,
                queue: job.record.queue,
                payload: job.payload,
                attempts: job.record.attempts,
                error: job.record.error,
                failed_at_ms: job.record.failed_at_ms,
            })
            .collect();
        let mut response = Response::new(ListFailedReply { jobs });
        if list.omitted > 0 {
            response
                .metadata_mut()
                .insert(OMITTED_HEADER, MetadataValue::from(list.omitted));
        }
        Ok(response)
    }

    async fn retry_failed(
        &self,
        request: Request<SelectFailed>,
    ) -> Result<Response<FailedChanged>, Status> {
        let max_tries = self.limits.default_max_tries();
        self.change_failed(request, |engine, selection| async move {
            let which = FailedSelection {
                ids: &selection.ids,
                queue: selection.queue.as_deref(),
            };
            engine.retry_failed(&which, max_tries).await
        })
        .await
    }

    async fn forget_failed(
        &self,
        request: Request<SelectFailed>,
    ) -> Result<Response<FailedChanged>, Status> {
        self.change_failed(request, |engine, selection| async move {
            let which = FailedSelection {
                ids: &selection.ids,
                queue: selection.queue.as_deref(),
            };
            engine.forget_failed(&which).await
        })
        .await
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let queues = self
            .engine
            .stats()
            .map_err(|e| self.status(e))?
            .into_iter()
            .map(|q| QueueStats {
                queue: q.queue,
                ready: q.ready,
                delayed: q.delayed,
                reserved: q.reserved,
                failed: q.failed,
                pushed_total: q.pushed_total,
            })
            .collect();
        Ok(Response::new(StatsReply { queues }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::log::AppendError;

    #[test]
    fn calls_that_did_nothing_are_unavailable_and_say_why() {
        let handing_over = status(EngineError::ShuttingDown, false);
        assert_eq!(handing_over.code(), Code::Unavailable);
        assert!(handing_over.message().contains("handing over"));
        let shutting_down = status(EngineError::ShuttingDown, true);
        assert_eq!(shutting_down.code(), Code::Unavailable);
        assert!(shutting_down.message().contains("shutting down"));
        // A write whose commit is lost was done: not a call to retry blindly.
        let lost = status(EngineError::Log(AppendError::Stopped), false);
        assert_eq!(lost.code(), Code::Internal);
    }
}
