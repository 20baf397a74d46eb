//! The limits of the queue and the checks of RPC arguments against them. Every failure
//! names the field it is about.

use std::time::Duration;

use securely_core::settings::QueueSettings;
use securely_proto::queue::{PushRequest, ReserveRequest};

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 128;
/// Largest payload, in bytes (tonic's default 4 MiB message limit stays well above it).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most attempts a job may be given.
pub const MAX_TRIES: u32 = securely_core::settings::QUEUE_MAX_TRIES;
/// Longest delay of a push: one year.
pub const MAX_DELAY_SECONDS: u64 = securely_core::settings::QUEUE_MAX_DELAY_SECONDS;
/// Longest reservation: one day.
pub const MAX_TIMEOUT_SECONDS: u64 = securely_core::settings::QUEUE_MAX_TIMEOUT_SECONDS;
/// Longest a Reserve call may wait for a job.
pub const MAX_WAIT_SECONDS: u64 = 300;
/// Longest error text kept for a failed attempt; longer texts are cut.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// An argument (or setting) out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field or settings key.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl Invalid {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// A checked Push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPush {
    /// The queue.
    pub queue: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Delay before the job becomes available.
    pub delay_ms: u64,
    /// Attempts (the default filled in).
    pub max_tries: u32,
}

/// Most queues one Reserve may name.
pub const MAX_RESERVE_QUEUES: usize = 16;

/// A checked Reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidReserve {
    /// The queues, in priority order (at least one).
    pub queues: Vec<String>,
    /// How long the reservation lasts (the default filled in).
    pub timeout_ms: u64,
    /// How long to wait for a job.
    pub wait: Duration,
}

/// The defaults of the settings, checked against the limits above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    default_max_tries: u32,
    default_timeout_seconds: u64,
}

impl Limits {
    /// The limits with the settings' defaults (already checked against the limits by
    /// `Settings::validate`).
    pub fn from_settings(queue: &QueueSettings) -> Self {
        Self {
            default_max_tries: queue.default_max_tries,
            default_timeout_seconds: queue.default_timeout_seconds,
        }
    }

    /// Attempts a retried failed job gets.
    pub fn default_max_tries(&self) -> u32 {
        self.default_max_tries
    }

    /// Checks a Push.
    pub fn push(&self, request: PushRequest) -> Result<ValidPush, Invalid> {
        queue_name("queue", &request.queue)?;
        if request.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Invalid::new(
                "payload",
                format!(
                    "{} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
                    request.payload.len()
                ),
            ));
        }
        let delay_ms = match (request.delay_seconds, request.available_at_ms) {
            (seconds, 0) => delay_ms(seconds)?,
            (0, at_ms) => delay_until(at_ms, crate::engine::now_ms())?,
            _ => {
                return Err(Invalid::new(
                    "available_at_ms",
                    "give either delay_seconds or available_at_ms, not both",
                ));
            }
        };
        let max_tries = match request.max_tries {
            0 => self.default_max_tries,
            n if n <= MAX_TRIES => n,
            n => {
                return Err(Invalid::new(
                    "max_tries",
                    format!("{n} is out of range 0..={MAX_TRIES} (0 selects the default)"),
                ));
            }
        };
        Ok(ValidPush {
            queue: request.queue,
            payload: request.payload,
            delay_ms,
            max_tries,
        })
    }

    /// Checks a Reserve.
    pub fn reserve(&self, request: ReserveRequest) -> Result<ValidReserve, Invalid> {
        let queues = reserve_queues(request.queue, request.queues)?;
        let timeout_ms = self.timeout_ms(request.timeout_seconds)?;
        if request.wait_seconds > MAX_WAIT_SECONDS {
            return Err(Invalid::new(
                "wait_seconds",
                format!(
                    "{} is out of range 0..={MAX_WAIT_SECONDS}",
                    request.wait_seconds
                ),
            ));
        }
        Ok(ValidReserve {
            queues,
            timeout_ms,
            wait: Duration::from_secs(request.wait_seconds),
        })
    }
}

impl Limits {
    /// Checks a reservation's length, `timeout_seconds` (0: the default), in ms.
    pub fn timeout_ms(&self, timeout_seconds: u64) -> Result<u64, Invalid> {
        let seconds = match timeout_seconds {
            0 => self.default_timeout_seconds,
            n if n <= MAX_TIMEOUT_SECONDS => n,
            n => {
                return Err(Invalid::new(
                    "timeout_seconds",
                    format!(
                        "{n} is out of range 0..={MAX_TIMEOUT_SECONDS} (0 selects the default)"
                    ),
                ));
            }
        };
        Ok(seconds * 1000)
    }
}

/// Checks the queues of a Reserve: `queue`, or else `queues` (distinct, at most
/// [`MAX_RESERVE_QUEUES`]).
fn reserve_queues(queue: String, queues: Vec<String>) -> Result<Vec<String>, Invalid> {
    if queues.is_empty() {
        queue_name("queue", &queue)?;
        return Ok(vec![queue]);
    }
    if !queue.is_empty() {
        return Err(Invalid::new(
            "queues",
            "name either one `queue` or several `queues`, not both",
        ));
    }
    if queues.len() > MAX_RESERVE_QUEUES {
        return Err(Invalid::new(
            "queues",
            format!(
                "{} queues exceeds the limit of {MAX_RESERVE_QUEUES}",
                queues.len()
            ),
        ));
    }
    for (i, name) in queues.iter().enumerate() {
        queue_name("queues", name)?;
        if queues[..i].contains(name) {
            return Err(Invalid::new("queues", format!("{name} is named twice")));
        }
    }
    Ok(queues)
}

/// Checks a time to become available, `at_ms` (Unix ms), as the delay from `now_ms`.
pub fn delay_until(at_ms: u64, now_ms: u64) -> Result<u64, Invalid> {
    let delay = at_ms.saturating_sub(now_ms);
    if delay > MAX_DELAY_SECONDS * 1000 {
        return Err(Invalid::new(
            "available_at_ms",
            format!("{at_ms} is more than {MAX_DELAY_SECONDS} s from now"),
        ));
    }
    Ok(delay)
}

/// Checks a delay, `delay_seconds`, in ms.
pub fn delay_ms(delay_seconds: u64) -> Result<u64, Invalid> {
    if delay_seconds > MAX_DELAY_SECONDS {
        return Err(Invalid::new(
            "delay_seconds",
            format!("{delay_seconds} is out of range 0..={MAX_DELAY_SECONDS}"),
        ));
    }
    Ok(delay_seconds * 1000)
}

/// Checks a queue name: 1 to [`MAX_QUEUE_NAME_BYTES`] bytes of `[A-Za-z0-9_.:-]`.
pub fn queue_name(field: &'static str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if name.len() > MAX_QUEUE_NAME_BYTES {
        return Err(Invalid::new(
            field,
            format!(
                "{} bytes exceeds the limit of {MAX_QUEUE_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(Invalid::new(
            field,
            format!("{name:?} contains {bad:?}; allowed are A-Z a-z 0-9 _ . : -"),
        ));
    }
    Ok(())
}

/// Checks a job id (ids start at 1).
pub fn job_id(id: u64) -> Result<u64, Invalid> {
    match id {
        0 => Err(Invalid::new("id", "0 is never a job id")),
        id => Ok(id),
    }
}

/// Most ids one RetryFailed or ForgetFailed names.
pub const MAX_SELECTED_IDS: usize = 10_000;

/// A checked selection of failed jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSelection {
    /// The jobs; empty: every failed job (of `queue`).
    pub ids: Vec<u64>,
    /// Only this queue's.
    pub queue: Option<String>,
}

/// Checks a selection of failed jobs: ids, or all, not both, not neither.
pub fn failed_selection(ids: Vec<u64>, all: bool, queue: &str) -> Result<ValidSelection, Invalid> {
    match (ids.is_empty(), all) {
        (true, false) => return Err(Invalid::new("ids", "name the jobs, or set all")),
        (false, true) => return Err(Invalid::new("all", "either ids or all, not both")),
        _ => {}
    }
    if ids.len() > MAX_SELECTED_IDS {
        return Err(Invalid::new(
            "ids",
            format!("{} ids exceed the limit of {MAX_SELECTED_IDS}", ids.len()),
        ));
    }
    for id in &ids {
        job_id(*id)?;
    }
    let queue = queue_filter(queue)?.map(str::to_string);
    Ok(ValidSelection { ids, queue })
}

/// The queue filter of ListFailed: empty means every queue.
pub fn queue_filter(name: &str) -> Result<Option<&str>, Invalid> {
    if name.is_empty() {
        return Ok(None);
    }
    queue_name("queue", name)?;
    Ok(Some(name))
}

/// An attempt's error text, cut to [`MAX_ERROR_BYTES`] on a character boundary.
pub fn error_text(mut text: String) -> String {
    const CUT_MARK: &str = " [cut]";
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES - CUT_MARK.len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(CUT_MARK);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from_settings(&QueueSettings::default())
    }

    fn push(queue: &str) -> PushRequest {
        PushRequest {
            queue: queue.into(),
            payload: b"x".to_vec(),
            delay_seconds: 0,
            max_tries: 0,
            ..Default::default()
        }
    }

    #[test]
    fn queue_names_follow_the_alphabet_and_length() {
        for good in ["a", "emails", "a.b:c-d_e", &"q".repeat(128)] {
            assert_eq!(queue_name("queue", good), Ok(()), "{good}");
        }
        for bad in ["", "with space", "nul\0", "é", "a/b", &"q".repeat(129)] {
            let err = queue_name("queue", bad).unwrap_err();
            assert_eq!(err.field, "queue", "{bad}");
        }
    }

    #[test]
    fn push_fills_in_the_default_tries_and_checks_bounds() {
        let valid = limits().push(push("q")).unwrap();
        assert_eq!(valid.max_tries, QueueSettings::default().default_max_tries);
        assert_eq!(valid.delay_ms, 0);

        let mut req = push("q");
        req.max_tries = MAX_TRIES + 1;
        assert_eq!(limits().push(req).unwrap_err().field, "max_tries");

        let mut req = push("q");
        req.delay_seconds = MAX_DELAY_SECONDS + 1;
        assert_eq!(limits().push(req).unwrap_err().field, "delay_seconds");

        let mut req = push("q");
        req.payload = vec![0; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(limits().push(req).unwrap_err().field, "payload");

        let mut req = push("q");
        req.payload = vec![0; MAX_PAYLOAD_BYTES];
        req.delay_seconds = 5;
        req.max_tries = 7;
        let valid = limits().push(req).unwrap();
        assert_eq!((valid.delay_ms, valid.max_tries), (5000, 7));
    }

    #[test]
    fn reserve_fills_in_the_default_timeout_and_checks_bounds() {
        let req = |timeout_seconds, wait_seconds| ReserveRequest {
            queue: "q".into(),
            timeout_seconds,
            wait_seconds,
            ..Default::default()
        };
        let valid = limits().reserve(req(0, 0)).unwrap();
        assert_eq!(
            valid.timeout_ms,
            QueueSettings::default().default_timeout_seconds * 1000
        );
        assert_eq!(valid.wait, Duration::ZERO);
        assert_eq!(
            limits()
                .reserve(req(MAX_TIMEOUT_SECONDS + 1, 0))
                .unwrap_err()
                .field,
            "timeout_seconds"
        );
        assert_eq!(
            limits()
                .reserve(req(1, MAX_WAIT_SECONDS + 1))
                .unwrap_err()
                .field,
            "wait_seconds"
        );
    }

    #[test]
    fn settings_beyond_the_limits_are_refused_by_the_settings_check() {
        let mut settings = securely_core::settings::Settings::default();
        settings.queue.default_max_tries = MAX_TRIES + 1;
        let errors = settings.validate().unwrap_err();
        assert_eq!(errors[0].key, "queue.default_max_tries");
    }

    #[test]
    fn ids_and_filters() {
        assert!(job_id(0).is_err());
        assert_eq!(job_id(9), Ok(9));
        assert_eq!(queue_filter(""), Ok(None));
        assert_eq!(queue_filter("q"), Ok(Some("q")));
        assert!(queue_filter("bad name").is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        assert_eq!(error_text("boom".into()), "boom");
        let cut = error_text("é".repeat(MAX_ERROR_BYTES));
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.ends_with(" [cut]"));
    }
}
