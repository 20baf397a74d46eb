//! `securelyctl`: the operator's CLI. It talks gRPC to the supervisor's control socket
//! and to each daemon's socket beside it.

#![forbid(unsafe_code)]

mod ca;
mod dns;
mod docs;
mod doctor;
mod errors;
mod follow;
mod https_status;
mod output;
mod queue;
mod sites;
mod stack;
mod target;
mod trust;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Control a running Securely stack.
#[derive(Debug, Parser)]
#[command(name = "securelyctl", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The settings file the stack runs with (to find its sockets).
    #[arg(short = 'c', long = "conf", value_name = "FILE", global = true)]
    conf: Option<PathBuf>,
    /// The supervisor's control socket (daemon sockets are found beside it).
    #[arg(long, value_name = "PATH", env = "SECURELY_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every process: state, pid, uptime, restarts, listeners, sled tree.
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restart one daemon and wait until the new instance serves, printing the restart's
    /// events as they happen, then the result.
    Restart {
        /// proxyd, dnsd or queued.
        daemon: String,
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
        /// Print the events and the result as JSON lines (the events as `watch --json`).
        #[arg(long)]
        json: bool,
    },
    /// Check that the system resolver sends the dev TLD to dnsd, and name the fix if not.
    Doctor,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for securely, securelyctl and the daemons into DIR.
    #[command(hide = true)]
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Follow the stack: its current state, then one line per event (supervisor phase,
    /// daemon state, a daemon's own phase, restart, upgrade) until Ctrl-C, the supervisor
    /// stops, or it re-executes for an upgrade.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the whole stack in place to the installed binaries and the settings file
    /// (like SIGQUIT), and wait for the result, printing the upgrade's events as they
    /// happen (before the supervisor's exec, then from its new image), then the result.
    Reload {
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
        /// Print the events and the result as JSON lines (the events as `watch --json`).
        #[arg(long)]
        json: bool,
    },
    /// Stop the whole stack and wait until it is gone.
    Stop {
        /// Stop at once instead of letting in-flight work finish (like SIGINT).
        #[arg(long)]
        fast: bool,
        /// Return once the stop is requested instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Route NAME.<tld> (and any --host) to a backend.
    #[command(name = "site:link")]
    SiteLink {
        /// The site's name, a DNS label such as "myapp".
        name: String,
        /// The backend, HOST:PORT.
        target: String,
        /// Extra hostnames the site answers for (repeatable).
        #[arg(long = "host", value_name = "HOSTNAME")]
        hosts: Vec<String>,
    },
    /// Remove a site.
    #[command(name = "site:unlink")]
    SiteUnlink {
        /// The site's name.
        name: String,
    },
    /// Serve a site over https with a certificate from the local CA (plain-HTTP requests
    /// are redirected).
    #[command(name = "site:secure")]
    SiteSecure {
        /// The site's name.
        name: String,
    },
    /// Serve a site over plain HTTP only again.
    #[command(name = "site:unsecure")]
    SiteUnsecure {
        /// The site's name.
        name: String,
    },
    /// Print the local CA's certificate (PEM) on stdout.
    #[command(name = "ca:export")]
    CaExport,
    /// Install the local CA's certificate where browsers and tools look: the system store
    /// (as root), your NSS databases (Chromium, every Firefox profile) and Java's cacerts;
    /// one line per store. Under sudo, the NSS databases are those of the user who ran it.
    #[command(name = "ca:trust")]
    CaTrust,
    /// Remove from every store what `ca:trust` put there (needs no running stack).
    #[command(name = "ca:untrust")]
    CaUntrust,
    /// List the sites.
    #[command(name = "site:list")]
    SiteList {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set an explicit DNS record (overrides the synthesised answer for NAME).
    #[command(name = "dns:set")]
    DnsSet {
        /// A full name inside the local TLD, e.g. api.test.
        name: String,
        /// A, AAAA, CNAME or TXT.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// The record's value.
        value: String,
        /// TTL in seconds (default: dnsd's).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Remove a name's explicit records (of one TYPE, or all).
    #[command(name = "dns:unset")]
    DnsUnset {
        /// The full name.
        name: String,
        /// Only records of this type.
        #[arg(value_name = "TYPE")]
        rtype: Option<String>,
    },
    /// List the explicit DNS records.
    #[command(name = "dns:list")]
    DnsList {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Push a job; prints its id.
    #[command(name = "queue:push")]
    QueuePush {
        /// The queue's name.
        queue: String,
        /// The job's payload.
        payload: String,
        /// Seconds before the job becomes available.
        #[arg(long, value_name = "SECS", default_value_t = 0, conflicts_with = "at")]
        delay: u64,
        /// When the job becomes available, as RFC 3339 (`2026-12-24T18:00:00+01:00`).
        #[arg(long, value_name = "TIME", value_parser = queue::parse_rfc3339_ms)]
        at: Option<u64>,
        /// Attempts before the job fails for good (default: queued's).
        #[arg(long, value_name = "N")]
        tries: Option<u32>,
    },
    /// Reserve the next job; prints "ID PAYLOAD". An empty queue exits non-zero.
    #[command(name = "queue:reserve")]
    QueueReserve {
        /// The queue's name, or several in priority order: `high,default`.
        queue: String,
        /// How long the reservation lasts before the job returns to the queue.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// How long to wait for a job when the queue is empty.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Acknowledge a reserved job: it is done.
    #[command(name = "queue:ack")]
    QueueAck {
        /// The job's id.
        id: u64,
        /// Only if the job is still at this attempt (refused if the reservation expired
        /// and the job was handed out again).
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Report a failed attempt: the job is retried, or moves to the failed list.
    #[command(name = "queue:fail")]
    QueueFail {
        /// The job's id.
        id: u64,
        /// What went wrong.
        #[arg(long, value_name = "TEXT", default_value = "")]
        error: String,
        /// Only if the job is still at this attempt.
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Put a reserved job back on its queue (after a delay), recording no error.
    #[command(name = "queue:release")]
    QueueRelease {
        /// The job's id.
        id: u64,
        /// Seconds before the job is available again.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        delay: u64,
        /// Only if the job is still at this attempt.
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Extend a job's reservation (a heartbeat for a long job).
    #[command(name = "queue:touch")]
    QueueTouch {
        /// The job's id.
        id: u64,
        /// The reservation's new length from now; 0 selects queued's default.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        timeout: u64,
        /// Only if the job is still at this attempt.
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// List the jobs that failed for good.
    #[command(name = "queue:failed")]
    QueueFailed {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put failed jobs back on their queues (IDs, or `all`), from attempt zero.
    #[command(name = "queue:retry")]
    QueueRetry {
        /// Job ids, or the word `all`.
        #[arg(required = true, value_name = "ID|all")]
        jobs: Vec<String>,
        /// With `all`: only this queue's failed jobs.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
    },
    /// Delete failed jobs for good.
    #[command(name = "queue:forget")]
    QueueForget {
        /// Job ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
    },
    /// Delete every failed job (of one queue with --queue).
    #[command(name = "queue:flush")]
    QueueFlush {
        /// Only this queue's failed jobs.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
    },
    /// Per-queue counts.
    #[command(name = "queue:stats")]
    QueueStats {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("securelyctl: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securelyctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            docs::completions(*shell);
            return Ok(());
        }
        Command::Man { dir } => return docs::man(dir),
        Command::CaUntrust => return trust::ca_untrust(),
        _ => {}
    }
    let target = target::Target::find(cli.conf.as_deref(), cli.socket.as_deref())?;
    match cli.command {
        Command::Completions { .. } | Command::Man { .. } | Command::CaUntrust => Ok(()),
        Command::Doctor => doctor::doctor(&target, cli.conf.as_deref()).await,
        Command::Status { json } => stack::status(&target, json).await,
        Command::Restart {
            daemon,
            quiet,
            json,
        } => stack::restart(&target, &daemon, follow::Printing { quiet, json }).await,
        Command::Reload { quiet, json } => {
            stack::reload(&target, follow::Printing { quiet, json }).await
        }
        Command::Watch { json } => watch::watch(&target, json).await,
        Command::Stop { fast, no_wait } => stack::stop(&target, fast, no_wait).await,
        Command::SiteLink {
            name,
            target: to,
            hosts,
        } => sites::link(&target, name, to, hosts).await,
        Command::SiteUnlink { name } => sites::unlink(&target, name).await,
        Command::SiteList { json } => sites::list(&target, json).await,
        Command::SiteSecure { name } => sites::secure(&target, name, true).await,
        Command::SiteUnsecure { name } => sites::secure(&target, name, false).await,
        Command::CaExport => ca::export(&target).await,
        Command::CaTrust => trust::ca_trust(&target).await,
        Command::DnsSet {
            name,
            rtype,
            value,
            ttl,
        } => dns::set(&target, name, rtype, value, ttl.unwrap_or(0)).await,
        Command::DnsUnset { name, rtype } => dns::unset(&target, name, rtype).await,
        Command::DnsList { json } => dns::list(&target, json).await,
        Command::QueuePush {
            queue,
            payload,
            delay,
            at,
            tries,
        } => {
            let when = queue::When {
                delay_seconds: delay,
                available_at_ms: at.unwrap_or(0),
            };
            queue::push(&target, queue, payload, when, tries.unwrap_or(0)).await
        }
        Command::QueueReserve {
            queue,
            timeout,
            wait,
        } => queue::reserve(&target, queue, timeout.unwrap_or(0), wait).await,
        Command::QueueAck { id, attempt } => queue::ack(&target, id, attempt.unwrap_or(0)).await,
        Command::QueueFail { id, error, attempt } => {
            queue::fail(&target, id, error, attempt.unwrap_or(0)).await
        }
        Command::QueueRelease { id, delay, attempt } => {
            queue::release(&target, id, delay, attempt.unwrap_or(0)).await
        }
        Command::QueueTouch {
            id,
            timeout,
            attempt,
        } => queue::touch(&target, id, timeout, attempt.unwrap_or(0)).await,
        Command::QueueFailed { json } => queue::failed(&target, json).await,
        Command::QueueRetry { jobs, queue } => queue::retry(&target, jobs, queue).await,
        Command::QueueForget { ids } => queue::forget(&target, ids, false, None).await,
        Command::QueueFlush { queue } => queue::forget(&target, Vec::new(), true, queue).await,
        Command::QueueStats { json } => queue::stats(&target, json).await,
    }
}
