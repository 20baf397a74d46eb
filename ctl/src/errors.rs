//! One clear line for a failed call.

/// Turns a gRPC status into an error naming who answered.
pub fn rpc(who: &str, status: tonic::Status) -> anyhow::Error {
    let kind = match status.code() {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Aborted => "failed",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "error",
    };
    anyhow::anyhow!("{who}: {kind}: {}", status.message())
}
