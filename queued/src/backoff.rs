//! Retry backoff: exponential from `queue.retry_backoff_seconds`, doubled per attempt and
//! capped at `queue.max_retry_backoff_seconds`.

use securely_core::settings::QueueSettings;

/// How long a failed job waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// A backoff starting at `base_seconds`, never above `max_seconds`.
    pub fn new(base_seconds: u64, max_seconds: u64) -> Self {
        Self {
            base_ms: base_seconds.saturating_mul(1000),
            max_ms: max_seconds.saturating_mul(1000),
        }
    }

    /// The backoff the settings describe.
    pub fn from_settings(queue: &QueueSettings) -> Self {
        Self::new(queue.retry_backoff_seconds, queue.max_retry_backoff_seconds)
    }

    /// The delay after a job's `attempts`-th attempt failed (`attempts` >= 1):
    /// `base * 2^(attempts - 1)`, capped.
    pub fn delay_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_and_caps() {
        let backoff = Backoff::new(2, 10);
        assert_eq!(backoff.delay_ms(1), 2_000);
        assert_eq!(backoff.delay_ms(2), 4_000);
        assert_eq!(backoff.delay_ms(3), 8_000);
        assert_eq!(backoff.delay_ms(4), 10_000);
        assert_eq!(backoff.delay_ms(1000), 10_000);
        assert_eq!(backoff.delay_ms(u32::MAX), 10_000);
    }

    #[test]
    fn zero_base_retries_at_once() {
        assert_eq!(Backoff::new(0, 300).delay_ms(5), 0);
    }

    #[test]
    fn follows_the_settings() {
        let settings = QueueSettings::default();
        let backoff = Backoff::from_settings(&settings);
        assert_eq!(backoff.delay_ms(1), settings.retry_backoff_seconds * 1000);
    }
}
