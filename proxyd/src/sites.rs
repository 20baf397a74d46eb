//! Sites: a name, the backend it forwards to and the hostnames it answers for, and the
//! checks every `LinkSite` request goes through.
//!
//! A site named `myapp` serves `myapp.<tld>` plus any hostnames listed explicitly. Names
//! and hostnames are kept lowercased, so the proxy path compares them byte for byte.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use securely_core::names::{is_dns_label, normalize_hostname};

/// The most extra hostnames one site may have. It bounds the work and the memory one
/// `LinkSite` call can cause; a site needing more is better split up.
pub const MAX_HOSTNAMES: usize = 256;
/// Whether hostnames (of sites and of targets) may contain `_`: no, HTTP hostnames are
/// DNS hostnames (letters, digits, hyphens).
const ALLOW_UNDERSCORE: bool = false;

/// A request argument that does not pass the checks, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// `name`, `target`, `hostnames[2]`, ...
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidField {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Where a site's requests go: plain HTTP to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// An IP address, or a hostname resolved when a request arrives.
    pub host: TargetHost,
    /// 1 to 65535.
    pub port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// Connected to directly.
    Ip(IpAddr),
    /// Resolved through the system resolver (lowercased; see [`crate::resolve`]).
    Name(String),
}

impl Target {
    /// Parses `HOST:PORT`: an IPv4 address, a bracketed IPv6 address (`[::1]:3000`) or a
    /// hostname, and a port from 1 to 65535.
    pub fn parse(text: &str) -> Result<Self, InvalidField> {
        let invalid = |problem: String| InvalidField::new("target", problem);
        if text.is_empty() {
            return Err(invalid("must not be empty; expected HOST:PORT".into()));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(invalid(format!("{text:?} needs a port from 1 to 65535")));
            }
            return Ok(Self {
                host: TargetHost::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(invalid(format!(
                "{text:?} has no port; expected HOST:PORT such as 127.0.0.1:3000"
            )));
        };
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(invalid(format!(
                    "{port:?} is not a port from 1 to 65535 (in {text:?})"
                )));
            }
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(invalid(format!(
                "{text:?} is not HOST:PORT; write IPv6 addresses in brackets, as [::1]:{port}"
            )));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self {
                host: TargetHost::Ip(ip),
                port,
            });
        }
        let name = normalize_hostname(host, ALLOW_UNDERSCORE).map_err(|problem| {
            invalid(format!(
                "{host:?} is neither an IP address nor a hostname: {problem}"
            ))
        })?;
        Ok(Self {
            host: TargetHost::Name(name),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            TargetHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// A validated site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// A lowercased DNS label.
    pub name: String,
    /// The backend.
    pub target: Target,
    /// Extra lowercased hostnames, without duplicates or the site's own `NAME.<tld>`.
    pub hostnames: Vec<String>,
    /// Whether it is served over https (its plain-HTTP requests are redirected).
    pub secure: bool,
}

impl Site {
    /// Checks and normalises the arguments of a `LinkSite` request: at most
    /// [`MAX_HOSTNAMES`] extra hostnames, kept in their first order without duplicates.
    /// The site is not secure.
    /// `tld` is the local top-level domain as the resolved settings hold it (lowercase,
    /// no trailing dot).
    pub fn new(
        name: &str,
        target: &str,
        hostnames: &[String],
        tld: &str,
    ) -> Result<Self, InvalidField> {
        let name = parse_name(name)?;
        let target = Target::parse(target)?;
        if hostnames.len() > MAX_HOSTNAMES {
            return Err(InvalidField::new(
                "hostnames",
                format!(
                    "{} hostnames given; a site has at most {MAX_HOSTNAMES}",
                    hostnames.len()
                ),
            ));
        }
        let primary = primary_hostname(&name, tld);
        let mut seen: HashSet<String> = HashSet::with_capacity(hostnames.len() + 1);
        seen.insert(primary);
        let mut kept: Vec<String> = Vec::with_capacity(hostnames.len());
        for (i, raw) in hostnames.iter().enumerate() {
            let hostname = normalize_hostname(raw, ALLOW_UNDERSCORE)
                .map_err(|problem| InvalidField::new(format!("hostnames[{i}]"), problem))?;
            if seen.insert(hostname.clone()) {
                kept.push(hostname);
            }
        }
        Ok(Self {
            name,
            target,
            hostnames: kept,
            secure: false,
        })
    }

    /// Every hostname the site answers for, `NAME.<tld>` first.
    pub fn serves(&self, tld: &str) -> Vec<String> {
        let mut all = Vec::with_capacity(1 + self.hostnames.len());
        all.push(primary_hostname(&self.name, tld));
        all.extend(self.hostnames.iter().cloned());
        all
    }
}

/// `NAME.<tld>`.
pub fn primary_hostname(name: &str, tld: &str) -> String {
    format!("{name}.{tld}")
}

/// Checks a site name: one DNS label, lowercased.
pub fn parse_name(raw: &str) -> Result<String, InvalidField> {
    if raw.is_empty() {
        return Err(InvalidField::new("name", "must not be empty"));
    }
    let name = raw.to_ascii_lowercase();
    if !is_dns_label(&name) {
        return Err(InvalidField::new(
            "name",
            format!(
                "{raw:?} is not a DNS label (letters, digits and inner hyphens, at most 63 characters)"
            ),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, target: &str, hostnames: &[&str]) -> Result<Site, InvalidField> {
        let hostnames: Vec<String> = hostnames.iter().map(|h| h.to_string()).collect();
        Site::new(name, target, &hostnames, "test")
    }

    #[test]
    fn names_are_lowercased_dns_labels() {
        assert_eq!(parse_name("MyApp").unwrap(), "myapp");
        assert_eq!(parse_name("a-1").unwrap(), "a-1");
        for bad in ["", "-a", "a-", "a.b", "a_b", "ä", &"a".repeat(64), "a b"] {
            let err = parse_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
        }
    }

    #[test]
    fn targets_take_ips_bracketed_ipv6_and_hostnames() {
        let t = Target::parse("127.0.0.1:3000").unwrap();
        assert_eq!(t.host, TargetHost::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(t.port, 3000);
        assert_eq!(t.to_string(), "127.0.0.1:3000");

        let t = Target::parse("[::1]:8080").unwrap();
        assert_eq!(t.to_string(), "[::1]:8080");

        let t = Target::parse("LocalHost:65535").unwrap();
        assert_eq!(t.host, TargetHost::Name("localhost".into()));
        assert_eq!(t.to_string(), "localhost:65535");
    }

    #[test]
    fn bad_targets_name_the_field_and_the_problem() {
        for (bad, says) in [
            ("", "empty"),
            ("localhost", "no port"),
            ("localhost:0", "port"),
            ("localhost:65536", "port"),
            ("localhost:http", "port"),
            ("127.0.0.1:0", "port"),
            ("::1:8080", "brackets"),
            ("bad_host:80", "neither"),
            (":80", "neither"),
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.field, "target");
            assert!(err.problem.contains(says), "{bad:?}: {}", err.problem);
        }
    }

    #[test]
    fn hostnames_are_normalised_deduplicated_and_checked() {
        let s = site(
            "app",
            "127.0.0.1:1",
            &["Www.Example.COM.", "www.example.com", "app.test"],
        )
        .unwrap();
        assert_eq!(s.hostnames, vec!["www.example.com"]);
        assert_eq!(s.serves("test"), vec!["app.test", "www.example.com"]);

        let err = site("app", "127.0.0.1:1", &["ok.example", "bad..example"]).unwrap_err();
        assert_eq!(err.field, "hostnames[1]");
        let err = site("app", "127.0.0.1:1", &[""]).unwrap_err();
        assert_eq!(err.field, "hostnames[0]");
        let long = format!("{}.example", "a.".repeat(130));
        let err = site("app", "127.0.0.1:1", &[long.as_str()]).unwrap_err();
        assert!(err.problem.contains("at most 253"), "{}", err.problem);
    }

    #[test]
    fn a_site_has_at_most_max_hostnames() {
        let many: Vec<String> = (0..MAX_HOSTNAMES)
            .map(|i| format!("h{i}.example"))
            .collect();
        let s = Site::new("app", "127.0.0.1:1", &many, "test").unwrap();
        assert_eq!(s.hostnames.len(), MAX_HOSTNAMES);

        let too_many: Vec<String> = (0..=MAX_HOSTNAMES)
            .map(|i| format!("h{i}.example"))
            .collect();
        let err = Site::new("app", "127.0.0.1:1", &too_many, "test").unwrap_err();
        assert_eq!(err.field, "hostnames");
        assert!(err.problem.contains("at most 256"), "{}", err.problem);
        // Duplicates count against the limit too: the bound is on the request's size.
        let repeated = vec!["same.example".to_string(); MAX_HOSTNAMES + 1];
        assert!(Site::new("app", "127.0.0.1:1", &repeated, "test").is_err());
    }
}
