//! [`Settings::validate`]: what `securely -t` checks, each problem named by its key.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::*;

impl Settings {
    /// Checks types' ranges, addresses, paths and clashing ports. Returns every problem
    /// found, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<SettingsError>> {
        let mut errors = Vec::new();
        if self.version != 1 {
            errors.push(SettingsError::new(
                "version",
                format!("unsupported version {}, expected 1", self.version),
            ));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            errors.push(SettingsError::new(
                "threads",
                format!("{} is out of range 1..={MAX_THREADS}", self.threads),
            ));
        }
        for (key, value) in [
            ("grace_period_seconds", self.grace_period_seconds),
            (
                "graceful_shutdown_timeout_seconds",
                self.graceful_shutdown_timeout_seconds,
            ),
        ] {
            if let Some(v) = value.filter(|v| *v > MAX_GRACE_SECONDS) {
                errors.push(SettingsError::new(
                    key,
                    format!("{v} is out of range 0..={MAX_GRACE_SECONDS}"),
                ));
            }
        }
        self.validate_paths(&mut errors);
        self.validate_client_binds(&mut errors);
        self.validate_listeners(&mut errors);
        self.validate_dns(&mut errors);
        self.validate_queue(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_paths(&self, errors: &mut Vec<SettingsError>) {
        let paths = [
            ("runtime_dir", &self.runtime_dir),
            ("data_dir", &self.data_dir),
            ("pid_file", &self.pid_file),
            ("error_log", &self.error_log),
            ("upgrade_sock", &self.upgrade_sock),
        ];
        for (key, path) in paths {
            let Some(path) = path else { continue };
            if !path.is_absolute() {
                errors.push(SettingsError::new(
                    key,
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }
        if let Some(ca) = &self.ca_file {
            if !Path::new(ca).is_absolute() {
                errors.push(SettingsError::new(
                    "ca_file",
                    format!("{ca} must be an absolute path"),
                ));
            } else if !Path::new(ca).is_file() {
                errors.push(SettingsError::new("ca_file", format!("{ca} is not a file")));
            }
        }
        // Every socket path must fit in sockaddr_un (108 bytes with the NUL).
        let sockets = std::iter::once(self.control_socket())
            .chain(crate::DAEMONS.iter().map(|d| self.daemon_socket(d)));
        if let Some(long) = sockets
            .into_iter()
            .find(|p| p.as_os_str().len() >= SUN_PATH_MAX)
        {
            errors.push(SettingsError::new(
                "runtime_dir",
                format!(
                    "{} is too long for a Unix socket path (at most {} bytes)",
                    long.display(),
                    SUN_PATH_MAX - 1
                ),
            ));
        }
        if let Some(upgrade) = &self.upgrade_sock
            && upgrade.as_os_str().len() >= SUN_PATH_MAX
        {
            errors.push(SettingsError::new(
                "upgrade_sock",
                format!(
                    "is too long for a Unix socket path (at most {} bytes)",
                    SUN_PATH_MAX - 1
                ),
            ));
        }
        if self.group.is_some() && self.user.is_none() {
            errors.push(SettingsError::new(
                "group",
                "needs user too: the group is dropped to together with the user",
            ));
        }
        for (key, name) in [("user", &self.user), ("group", &self.group)] {
            if name.as_deref() == Some("") {
                errors.push(SettingsError::new(key, "must not be empty"));
            }
        }
        if let Some(user) = &self.user
            && !user.is_empty()
            && matches!(nix::unistd::User::from_name(user), Ok(None))
        {
            errors.push(SettingsError::new("user", format!("no such user {user:?}")));
        }
        if let Some(group) = &self.group
            && !group.is_empty()
            && matches!(nix::unistd::Group::from_name(group), Ok(None))
        {
            errors.push(SettingsError::new(
                "group",
                format!("no such group {group:?}"),
            ));
        }
    }

    fn validate_client_binds(&self, errors: &mut Vec<SettingsError>) {
        for (key, list, want_v4) in [
            ("client_bind_to_ipv4", &self.client_bind_to_ipv4, true),
            ("client_bind_to_ipv6", &self.client_bind_to_ipv6, false),
        ] {
            for (i, addr) in list.iter().enumerate() {
                match addr.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == want_v4 => {}
                    Ok(_) => errors.push(SettingsError::new(
                        format!("{key}[{i}]"),
                        format!(
                            "{addr} is not an IPv{} address",
                            if want_v4 { 4 } else { 6 }
                        ),
                    )),
                    Err(_) => errors.push(SettingsError::new(
                        format!("{key}[{i}]"),
                        format!("{addr:?} is not an IP address"),
                    )),
                }
            }
        }
    }

    fn validate_listeners(&self, errors: &mut Vec<SettingsError>) {
        // Every TCP port is claimed once: proxy listeners and dnsd's TCP side share the space.
        let mut tcp_claims: Vec<(String, SocketAddr)> = Vec::new();
        let mut udp_claims: BTreeSet<SocketAddr> = BTreeSet::new();
        // (key, addresses, also UDP, may be empty)
        let sections = [
            ("proxy.listen", &self.proxy.listen, false, false),
            ("proxy.tls_listen", &self.proxy.tls_listen, false, true),
            ("dns.listen", &self.dns.listen, true, false),
        ];
        for (section, list, with_udp, may_be_empty) in sections {
            if list.is_empty() && !may_be_empty {
                errors.push(SettingsError::new(
                    section,
                    "needs at least one address to listen on",
                ));
            }
            for (i, text) in list.iter().enumerate() {
                let key = format!("{section}[{i}]");
                let addr = match parse_socket_addr(text) {
                    Ok(addr) => addr,
                    Err(problem) => {
                        errors.push(SettingsError::new(key, problem));
                        continue;
                    }
                };
                if let Some((other, _)) = tcp_claims.iter().find(|(_, a)| clashes(*a, addr)) {
                    errors.push(SettingsError::new(
                        key.clone(),
                        format!("{addr} clashes with {other} (same TCP port)"),
                    ));
                } else {
                    tcp_claims.push((key.clone(), addr));
                }
                if with_udp && !udp_claims.insert(addr) {
                    errors.push(SettingsError::new(key, format!("{addr} is listed twice")));
                }
            }
        }
    }

    fn validate_dns(&self, errors: &mut Vec<SettingsError>) {
        let tld = self.dns.tld.trim_end_matches('.');
        if tld.is_empty()
            || tld.len() > crate::names::MAX_NAME_LEN / 2
            || !tld.split('.').all(is_dns_label)
        {
            errors.push(SettingsError::new(
                "dns.tld",
                format!("{:?} is not a valid domain name", self.dns.tld),
            ));
        }
        if self.dns.addresses.is_empty() {
            errors.push(SettingsError::new(
                "dns.addresses",
                "needs at least one address to answer with",
            ));
        }
        for (i, addr) in self.dns.addresses.iter().enumerate() {
            if addr.parse::<IpAddr>().is_err() {
                errors.push(SettingsError::new(
                    format!("dns.addresses[{i}]"),
                    format!("{addr:?} is not an IP address"),
                ));
            }
        }
        let listen = self.dns_listen();
        for (i, upstream) in self.dns.upstreams.iter().enumerate() {
            match parse_upstream(upstream) {
                None => errors.push(SettingsError::new(
                    format!("dns.upstreams[{i}]"),
                    format!("{upstream:?} is not an IP address or IP:PORT"),
                )),
                Some(up) if listen.iter().any(|own| reaches(*own, up)) => {
                    errors.push(SettingsError::new(
                        format!("dns.upstreams[{i}]"),
                        format!("{upstream} is dnsd itself (dns.listen): queries would loop"),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.dns.ttl > 86_400 {
            errors.push(SettingsError::new(
                "dns.ttl",
                format!("{} is out of range 0..=86400", self.dns.ttl),
            ));
        }
    }

    fn validate_queue(&self, errors: &mut Vec<SettingsError>) {
        let q = &self.queue;
        if !(1..=QUEUE_MAX_TIMEOUT_SECONDS).contains(&q.default_timeout_seconds) {
            errors.push(SettingsError::new(
                "queue.default_timeout_seconds",
                format!(
                    "{} is out of range 1..={QUEUE_MAX_TIMEOUT_SECONDS}",
                    q.default_timeout_seconds
                ),
            ));
        }
        if !(1..=QUEUE_MAX_TRIES).contains(&q.default_max_tries) {
            errors.push(SettingsError::new(
                "queue.default_max_tries",
                format!(
                    "{} is out of range 1..={QUEUE_MAX_TRIES}",
                    q.default_max_tries
                ),
            ));
        }
        if q.max_retry_backoff_seconds > QUEUE_MAX_DELAY_SECONDS {
            errors.push(SettingsError::new(
                "queue.max_retry_backoff_seconds",
                format!(
                    "{} is out of range 0..={QUEUE_MAX_DELAY_SECONDS}",
                    q.max_retry_backoff_seconds
                ),
            ));
        } else if q.max_retry_backoff_seconds < q.retry_backoff_seconds {
            errors.push(SettingsError::new(
                "queue.max_retry_backoff_seconds",
                "must not be below queue.retry_backoff_seconds",
            ));
        }
    }
}

/// Whether a query sent to `upstream` would arrive at a socket listening on `own`.
fn reaches(own: SocketAddr, upstream: SocketAddr) -> bool {
    own.port() == upstream.port()
        && (own.ip() == upstream.ip()
            || (own.ip().is_unspecified() && own.is_ipv4() == upstream.is_ipv4()))
}

/// Two TCP listeners clash when their ports match and one address covers the other.
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4())
            || (b.ip().is_unspecified() && a.is_ipv4() == b.is_ipv4()))
}
