//! The values stored in the trees, encoded with bincode 2 (serde).
//!
//! Payloads are not part of these records: they live raw in the `payloads` tree, written
//! once at push, so reserving or retrying a job rewrites only a few dozen bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A live job (`jobs` tree): waiting in the `ready` index or reserved by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The queue.
    pub queue: String,
    /// Attempts before the job fails for good.
    pub max_tries: u32,
    /// Reservations so far.
    pub attempts: u32,
    /// Unix ms of the push.
    pub created_at_ms: u64,
    /// Where the job is.
    pub state: JobState,
}

/// Where a live job is; each state has exactly one index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// In `ready` under `(queue, available_at_ms, id)`.
    Waiting {
        /// When it may be reserved, Unix ms.
        available_at_ms: u64,
    },
    /// In `reserved` under `(until_ms, id)`.
    Reserved {
        /// When the reservation expires, Unix ms.
        until_ms: u64,
    },
}

/// A job that failed for good (`failed` tree); its payload stays in `payloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    /// The job.
    pub id: u64,
    /// The queue.
    pub queue: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// Unix ms of the final failure.
    pub failed_at_ms: u64,
}

/// Per-queue counters (`counters` tree, keyed by queue name), updated in the same
/// transaction as the move they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Jobs in the `ready` index, available now or later.
    pub waiting: u64,
    /// Jobs reserved by a worker.
    pub reserved: u64,
    /// Jobs in the failed list.
    pub failed: u64,
    /// Jobs ever pushed.
    pub pushed_total: u64,
}

/// A record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Encoding failed (should not happen for these types).
    #[error("encoding {what}: {source}")]
    Encode {
        /// The record type.
        what: &'static str,
        /// The reason.
        source: bincode::error::EncodeError,
    },
    /// The stored bytes are not a valid record.
    #[error("decoding {what}: {source}")]
    Decode {
        /// The record type.
        what: &'static str,
        /// The reason.
        source: bincode::error::DecodeError,
    },
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a record.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, RecordError> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|source| RecordError::Encode { what, source })
}

/// Decodes a record.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|source| RecordError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let job = JobRecord {
            queue: "q".into(),
            max_tries: 3,
            attempts: 1,
            created_at_ms: 17,
            state: JobState::Reserved { until_ms: 99 },
        };
        let bytes = encode("job", &job).unwrap();
        assert_eq!(decode::<JobRecord>("job", &bytes).unwrap(), job);
        assert!(decode::<JobRecord>("job", &[0xff, 0xff, 0xff]).is_err());
    }
}
