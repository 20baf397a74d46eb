//! Key layouts of the index trees. Every number is big-endian so that sled's byte order
//! is numeric order.
//!
//! Queue names never contain a NUL byte (see [`crate::validate`]), so `queue ++ 0x00`
//! is a prefix that no other queue's keys share.

use sled::IVec;

/// Separates the queue name from the rest of a key.
const QUEUE_END: u8 = 0;

/// The `jobs`/`payloads` key of a job.
pub fn id_key(id: u64) -> IVec {
    IVec::from(&id.to_be_bytes()[..])
}

/// The prefix of every `ready` (and `failed`) key of `queue`.
pub fn queue_prefix(queue: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 1 + 16);
    key.extend_from_slice(queue.as_bytes());
    key.push(QUEUE_END);
    key
}

/// The `ready` key: `queue 0x00 available_at_ms id`, so a prefix scan yields a queue's
/// jobs in order of availability, then id.
pub fn ready_key(queue: &str, available_at_ms: u64, id: u64) -> Vec<u8> {
    let mut key = queue_prefix(queue);
    key.extend_from_slice(&available_at_ms.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The first `ready` key of `queue` that becomes available after `at_ms`.
pub fn ready_key_after(queue: &str, at_ms: u64) -> Vec<u8> {
    let mut key = queue_prefix(queue);
    key.extend_from_slice(&at_ms.saturating_add(1).to_be_bytes());
    key
}

/// A parsed `ready` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyKey {
    /// The queue.
    pub queue: String,
    /// When the job becomes available, Unix ms.
    pub available_at_ms: u64,
    /// The job.
    pub id: u64,
}

/// Reads a `ready` key.
pub fn parse_ready_key(key: &[u8]) -> Option<ReadyKey> {
    let split = key.len().checked_sub(17)?;
    let (queue, rest) = key.split_at(split);
    let (&end, numbers) = rest.split_first()?;
    if end != QUEUE_END {
        return None;
    }
    let (at, id) = numbers.split_at(8);
    Some(ReadyKey {
        queue: String::from_utf8(queue.to_vec()).ok()?,
        available_at_ms: u64::from_be_bytes(at.try_into().ok()?),
        id: u64::from_be_bytes(id.try_into().ok()?),
    })
}

/// The `reserved` key: `deadline_ms id`, so the earliest deadline comes first.
pub fn reserved_key(until_ms: u64, id: u64) -> IVec {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&until_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    IVec::from(&key[..])
}

/// Reads a `reserved` key as `(deadline_ms, id)`.
pub fn parse_reserved_key(key: &[u8]) -> Option<(u64, u64)> {
    let (until, id) = key.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(until.try_into().ok()?),
        u64::from_be_bytes(id.try_into().ok()?),
    ))
}

/// The `failed` key: `queue 0x00 id`, so one queue's failed jobs form a prefix.
pub fn failed_key(queue: &str, id: u64) -> Vec<u8> {
    let mut key = queue_prefix(queue);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_keys_sort_by_availability_then_id_within_a_queue() {
        let a = ready_key("q", 5, 9);
        let b = ready_key("q", 6, 1);
        let c = ready_key("q", 6, 2);
        assert!(a < b && b < c);
        assert!(a.starts_with(&queue_prefix("q")));
        assert!(!ready_key("qq", 0, 0).starts_with(&queue_prefix("q")));
    }

    #[test]
    fn keys_round_trip() {
        let parsed = parse_ready_key(&ready_key("emails:high", 1234, 77)).unwrap();
        assert_eq!(
            parsed,
            ReadyKey {
                queue: "emails:high".into(),
                available_at_ms: 1234,
                id: 77
            }
        );
        assert_eq!(parse_reserved_key(&reserved_key(10, 3)), Some((10, 3)));
        assert_eq!(&id_key(42)[..], &42u64.to_be_bytes()[..]);
        assert_eq!(parse_ready_key(b"short"), None);
        assert_eq!(parse_reserved_key(b"short"), None);
    }

    #[test]
    fn ready_key_after_skips_everything_available_by_then() {
        let boundary = ready_key_after("q", 100);
        assert!(ready_key("q", 100, u64::MAX) < boundary);
        assert!(ready_key("q", 101, 0) >= boundary);
    }
}
