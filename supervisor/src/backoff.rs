//! Restart backoff: the first retry comes quickly, each further one waits twice as long,
//! up to a cap; an instance that stays up long enough resets it.

use std::time::Duration;

/// Delay before the first restart.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// An instance that stays ready this long is healthy: its next crash restarts quickly.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Failed starts in a row after which the daemon shows as `failed` (it is still retried).
pub const CRASH_LOOP_THRESHOLD: u32 = 5;

/// The delay before restart number `consecutive_failures` (1 for the first failure).
pub fn delay(consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_up_to_30s() {
        assert_eq!(delay(1), Duration::from_millis(100));
        assert_eq!(delay(2), Duration::from_millis(200));
        assert_eq!(delay(5), Duration::from_millis(1600));
        assert_eq!(delay(9), Duration::from_millis(25600));
        assert_eq!(delay(10), MAX_RETRY);
        assert_eq!(delay(u32::MAX), MAX_RETRY);
    }
}
