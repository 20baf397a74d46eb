//! `doctor`: is the stack up, does dnsd answer, and does the machine's own resolver send
//! the dev TLD to dnsd? If not, it names the fix (it changes nothing itself).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use securely_core::settings::Settings;

use crate::target::Target;

/// How long dnsd and the system resolver get to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Where systemd-resolved's stub listens, as /etc/resolv.conf names it when in use.
const RESOLVED_STUB: &str = "127.0.0.53";
/// Where the package installs the resolved drop-in, and where an operator would.
const DROP_INS: [&str; 2] = [
    "/usr/lib/systemd/resolved.conf.d/securely.conf",
    "/etc/systemd/resolved.conf.d/securely.conf",
];

pub async fn doctor(target: &Target, conf: Option<&Path>) -> anyhow::Result<()> {
    // The TLD comes from the settings (`-c`), else the default.
    let settings = match conf {
        Some(path) => Settings::load_with(path, |_| {})?,
        None => Settings::default(),
    }
    .resolve();
    let tld = settings.dns.tld.clone();

    // The stack.
    let status = crate::stack::fetch_status(target)
        .await
        .context("the stack does not answer; start it first")?;
    for daemon in &status.daemons {
        println!("{:<8} {} (pid {})", daemon.name, daemon.state, daemon.pid);
    }

    // dnsd itself, where the running stack says it listens.
    let dnsd = status
        .daemons
        .iter()
        .filter(|d| d.name == "dnsd")
        .flat_map(|d| d.listeners.iter())
        .find_map(|url| url.strip_prefix("udp://")?.parse::<SocketAddr>().ok())
        .context("dnsd has no UDP listener")?;
    let probe = format!("securely-doctor.{tld}");
    let expected = ask(dnsd, &probe)
        .await
        .with_context(|| format!("dnsd on {dnsd} does not answer {probe}"))?;
    println!("dnsd     answers {probe} with {}", list(&expected));

    // The system resolver.
    let system = tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::lookup_host((probe.as_str(), 0)))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|found| found.map_err(|e| e.to_string()))
        .map(|found| found.map(|a| a.ip()).collect::<BTreeSet<IpAddr>>());
    match system {
        Ok(found) if !found.is_disjoint(&expected) => {
            println!("ok: the system resolver sends .{tld} to dnsd ({dnsd})");
            Ok(())
        }
        other => {
            let saw = match other {
                Ok(found) => format!("answers {}", list(&found)),
                Err(e) => format!("fails ({e})"),
            };
            println!("not routed: the system resolver {saw} for {probe}");
            println!("fix: {}", fix(&tld, dnsd));
            bail!("the system resolver does not send .{tld} to dnsd")
        }
    }
}

/// What to do, from how this machine resolves names.
fn fix(tld: &str, dnsd: SocketAddr) -> String {
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let uses_resolved = resolv_conf
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", RESOLVED_STUB]);
    let drop_in = DROP_INS.iter().find(|p| Path::new(p).exists());
    match (uses_resolved, drop_in) {
        (true, None) => format!(
            "create {} with\n  [Resolve]\n  DNS={dnsd}\n  Domains=~{tld}\nthen run: systemctl reload-or-restart systemd-resolved",
            DROP_INS[1]
        ),
        (true, Some(path)) => format!(
            "{path} is installed but systemd-resolved does not use it, or it names another \
             address than dnsd's {dnsd}: check it and `resolvectl status`, then run: \
             systemctl reload-or-restart systemd-resolved"
        ),
        (false, _) => format!(
            "/etc/resolv.conf does not use systemd-resolved ({RESOLVED_STUB}): enable \
             systemd-resolved (the package's drop-in then routes ~{tld} to {dnsd}), or have \
             your local resolver forward {tld} to {dnsd} (dnsmasq: server=/{tld}/{}#{})",
            dnsd.ip(),
            dnsd.port()
        ),
    }
}

/// Asks dnsd for the A and AAAA records of `name`.
async fn ask(server: SocketAddr, name: &str) -> anyhow::Result<BTreeSet<IpAddr>> {
    let mut found = BTreeSet::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name)?, rtype));
        let packet = query.to_vec()?;
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        socket.send_to(&packet, server).await?;
        let mut reply = vec![0u8; 4096];
        let len = tokio::time::timeout(ANSWER_TIMEOUT, socket.recv(&mut reply))
            .await
            .context("no answer")??;
        let reply = Message::from_vec(&reply[..len])?;
        for record in &reply.answers {
            match &record.data {
                RData::A(a) => {
                    found.insert(IpAddr::V4(a.0));
                }
                RData::AAAA(a) => {
                    found.insert(IpAddr::V6(a.0));
                }
                _ => {}
            }
        }
    }
    if found.is_empty() {
        bail!("no address in the answer");
    }
    Ok(found)
}

fn list(addrs: &BTreeSet<IpAddr>) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
