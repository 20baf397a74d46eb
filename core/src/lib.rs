//! Lifecycle code every Securely process shares.
//!
//! The supervisor and the daemons meet through these pieces: one settings file
//! ([`settings`]), sockets handed down at exec time ([`listen_fds`]), readiness reported
//! back up ([`readiness`]), shutdown requests from signals or RPC ([`shutdown`]), logging
//! that names its process ([`logging`]), and the gRPC plumbing on Unix sockets ([`rpc`],
//! [`control`]). [`daemon`] ties them into the start-up every daemon shares.

pub mod bind;
pub mod control;
pub mod daemon;
pub mod drain;
pub mod durable;
pub mod listen_fds;
pub mod logging;
pub mod names;
pub mod paths;
pub mod readiness;
pub mod rpc;
pub mod settings;
pub mod shutdown;
pub mod store;

/// The daemons the supervisor runs, in start order.
pub const DAEMONS: [&str; 3] = ["proxyd", "dnsd", "queued"];

/// The executable of a daemon (`proxyd` -> `securely-proxyd`).
pub fn daemon_binary_name(daemon: &str) -> String {
    format!("securely-{daemon}")
}
