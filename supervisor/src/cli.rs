//! The supervisor's command line, as pingora's: `securely [-c FILE] [-d] [-t] [-u]`.

use std::path::PathBuf;

use clap::Parser;

/// Securely: one supervisor for proxyd, dnsd and queued.
#[derive(Debug, Parser)]
#[command(name = "securely", version, about, long_about = None)]
pub struct Args {
    /// The YAML settings file; without it the embedded developer defaults apply.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    pub conf: Option<PathBuf>,
    /// Run in the background; exit 0 only once every daemon is ready.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Check the settings and exit: 0 when valid, 1 with the reasons otherwise.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take the listening sockets over from a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
}
