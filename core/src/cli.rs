//! The daemons' command line, defined once: [`Daemon::start`](crate::daemon::Daemon::start)
//! parses it and `securelyctl man` renders it into each daemon's man page.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

/// `securely-<daemon> [-c FILE]`.
#[derive(Debug, Clone, Default, Parser)]
#[command(version)]
pub struct DaemonArgs {
    /// The YAML settings file (without it: the settings the supervisor hands down, or the
    /// embedded defaults)
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    pub conf: Option<PathBuf>,
}

/// What happened to a daemon's command line.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these arguments.
    Run(DaemonArgs),
    /// `--help` or `--version`: print this on stdout and exit 0.
    Info(String),
}

impl DaemonArgs {
    /// The command line of `daemon` (`proxyd`, `dnsd`, `queued`), named after its binary
    /// and described for its man page.
    pub fn command(daemon: &str) -> clap::Command {
        let about = about(daemon);
        DaemonArgs::command_for_update()
            .name(crate::daemon_binary_name(daemon))
            .about(about)
            .long_about(format!(
                "{about}. The supervisor hands it its sockets and settings; run by hand, it \
                 reads FILE (or the embedded defaults) and binds its own sockets."
            ))
    }

    /// Parses `args` (the program name first) as `daemon`'s command line. A usage error
    /// is the message to print, usage included.
    pub fn parse_for(
        daemon: &str,
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Result<Parsed, String> {
        let parsed = Self::command(daemon)
            .try_get_matches_from(args)
            .and_then(|matches| Self::from_arg_matches(&matches));
        match parsed {
            Ok(args) => Ok(Parsed::Run(args)),
            Err(e) if e.use_stderr() => {
                let text = e.render().to_string();
                Err(text
                    .strip_prefix("error: ")
                    .unwrap_or(&text)
                    .trim_end()
                    .to_string())
            }
            Err(e) => Ok(Parsed::Info(e.render().to_string())),
        }
    }
}

/// One line about each daemon.
fn about(daemon: &str) -> &'static str {
    match daemon {
        "proxyd" => "Securely's HTTP reverse proxy (pingora), run by the securely supervisor",
        "dnsd" => {
            "Securely's DNS server for the local TLD (hickory), run by the securely supervisor"
        }
        "queued" => "Securely's durable job queue (sled), run by the securely supervisor",
        _ => "A Securely daemon, run by the securely supervisor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        DaemonArgs::parse_for("dnsd", args.iter().map(Into::into))
    }

    #[test]
    fn the_command_line_is_a_settings_file_or_nothing() {
        let Ok(Parsed::Run(args)) = parse(&["securely-dnsd"]) else {
            panic!("no arguments run");
        };
        assert_eq!(args.conf, None);
        for flag in ["-c", "--conf"] {
            let Ok(Parsed::Run(args)) = parse(&["securely-dnsd", flag, "/etc/s.yaml"]) else {
                panic!("{flag} FILE runs");
            };
            assert_eq!(args.conf, Some(PathBuf::from("/etc/s.yaml")));
        }
        let Ok(Parsed::Info(version)) = parse(&["securely-dnsd", "--version"]) else {
            panic!("--version prints");
        };
        assert_eq!(
            version.trim(),
            format!("securely-dnsd {}", env!("CARGO_PKG_VERSION"))
        );
        let Ok(Parsed::Info(help)) = parse(&["securely-dnsd", "-h"]) else {
            panic!("-h prints");
        };
        assert!(
            help.contains("--conf <FILE>") && help.contains("DNS server"),
            "{help}"
        );
        let usage = parse(&["securely-dnsd", "-x"]).unwrap_err();
        assert!(usage.contains("'-x'") && usage.contains("Usage"), "{usage}");
        let usage = parse(&["securely-dnsd", "-c"]).unwrap_err();
        assert!(usage.contains("FILE"), "{usage}");
    }
}
