//! Lifecycle code every Securely process shares.
//!
//! The supervisor and the daemons meet through these pieces: one settings file
//! ([`settings`]), sockets handed down at exec time ([`listen_fds`]), readiness reported
//! back up ([`readiness`]), shutdown requests from signals or RPC ([`shutdown`]), logging
//! that names its process ([`logging`]), and the gRPC plumbing on Unix sockets ([`rpc`],
//! [`control`]). [`daemon`] ties them into the start-up every daemon shares, [`cli`] is
//! its command line, and [`lifecycle`] drives every daemon from its turn to its exit
//! through the hand-over, over what the daemon tells it in [`tenure`].
//!
//! The only unsafe code is in one private module (taking inherited fds and announcement
//! variables at start-up); everything else is denied it.

#![deny(unsafe_code)]

pub mod admin;
pub mod bind;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod drain;
pub mod durable;
pub mod event_text;
mod inherited;
pub mod lifecycle;
pub mod listen_fds;
pub mod logging;
pub mod names;
pub mod paths;
pub mod readiness;
pub mod rpc;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod tenure;

/// The daemons the supervisor runs, in start order.
pub const DAEMONS: [&str; 3] = ["proxyd", "dnsd", "queued"];

/// The executable of a daemon (`proxyd` -> `securely-proxyd`).
pub fn daemon_binary_name(daemon: &str) -> String {
    format!("securely-{daemon}")
}
