//! Admin calls: a gRPC handler that changes a daemon's sled tree runs the change (its
//! writes and the flush that makes it durable) on tokio's blocking pool, so that no async
//! worker waits for the disk.

use tonic::Status;

/// Runs `op` on the blocking pool and answers with its result: its error through
/// `to_status`, a panic as INTERNAL. The call being answered waits for it; a hand-over or
/// a stop waits for the calls in flight, so a change that began is finished (or undone by
/// the store) before the tree closes.
pub async fn blocking_call<T, E>(
    op: impl FnOnce() -> Result<T, E> + Send + 'static,
    to_status: impl FnOnce(E) -> Status,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| Status::internal(format!("the admin operation failed: {e}")))?
        .map_err(to_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_errors_and_panics_become_answers() {
        let ok = blocking_call(|| Ok::<_, String>(7), Status::not_found).await;
        assert_eq!(ok.unwrap(), 7);
        let err = blocking_call(
            || Err::<u8, _>("no such site".to_string()),
            Status::not_found,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "no such site");
        let panicked = blocking_call::<u8, String>(|| panic!("boom"), Status::not_found)
            .await
            .unwrap_err();
        assert_eq!(panicked.code(), tonic::Code::Internal);
    }
}
