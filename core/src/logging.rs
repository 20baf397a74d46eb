//! Logging through `tracing`, naming the process on every line.
//!
//! Under systemd (`JOURNAL_STREAM` set) each process logs to the journal under its own
//! identifier (`journalctl -t securely-proxyd`); otherwise lines go to stderr, or to
//! `error_log` when the settings name one, prefixed `name[pid]:`. The `log` crate (which
//! pingora uses) is bridged in. `SECURELY_LOG` takes an env-filter directive
//! (default `info`). Records of target [`EVENT_TARGET`] (the stack's events) go to the
//! journal only, whatever `SECURELY_LOG` says, with their fields as they are named
//! (`securely_event` -> `SECURELY_EVENT`); other records' fields are prefixed `F_` there.

use std::fmt;
use std::path::Path;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The variable holding the log filter.
pub const LOG_FILTER_ENV: &str = "SECURELY_LOG";

/// The filter when `SECURELY_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info";

/// The target of the stack's event records: journal only, fields unprefixed.
pub const EVENT_TARGET: &str = "securely_event";

/// Installs the global subscriber for process `name`, filtering by `SECURELY_LOG` or else
/// `default_filter` (an env-filter directive such as `info,hickory_server=warn`). Later
/// calls do nothing.
pub fn init(name: &str, error_log: Option<&Path>, default_filter: &str) {
    // Every record but the events, as `SECURELY_LOG` (or `default_filter`) says.
    let filter = || {
        let filter = EnvFilter::try_from_env(LOG_FILTER_ENV)
            .unwrap_or_else(|_| EnvFilter::new(default_filter));
        match format!("{EVENT_TARGET}=off").parse() {
            Ok(no_events) => filter.add_directive(no_events),
            Err(_) => filter,
        }
    };
    if journal_connected()
        && let Ok(journald) = tracing_journald::layer()
    {
        let layer = journald.with_syslog_identifier(name.to_string());
        let events = tracing_journald::layer().ok().map(|events| {
            events
                .with_syslog_identifier(name.to_string())
                .with_field_prefix(None)
                .with_filter(filter_fn(|meta| meta.target() == EVENT_TARGET))
        });
        let _ = tracing_subscriber::registry()
            .with(layer.with_filter(filter()))
            .with(events)
            .try_init();
        return;
    }
    let format = Prefixed {
        name: name.to_string(),
        inner: tracing_subscriber::fmt::format()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
    };
    let file = error_log.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("{name}: cannot open error_log {}: {e}", path.display()))
            .ok()
    });
    let layer = match file {
        Some(file) => tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .boxed(),
        None => tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter()))
        .try_init();
}

/// Whether stderr is systemd's journal stream: `JOURNAL_STREAM` names its device and
/// inode (a variable inherited from elsewhere does not match).
pub fn journal_connected() -> bool {
    use std::os::fd::AsFd;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    expected.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// The default format, prefixed with `name[pid]: `.
struct Prefixed {
    name: String,
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}[{}]: ", self.name, std::process::id())?;
        self.inner.format_event(ctx, writer, event)
    }
}
