//! Names outside the local TLD, forwarded to the configured upstream resolvers.
//!
//! Built on hickory-resolver rather than a byte-for-byte packet relay: the resolver
//! brings a cache that honours positive and negative TTLs, failover across upstreams
//! ranked by response time, a TCP retry of truncated UDP answers, and the transaction-id
//! and question checks that keep spoofed replies out, each of which a relay would have
//! to re-implement. The price is that an answer is re-assembled from the lookup (its
//! answer records, or the upstream's response code and SOA for a negative answer)
//! rather than copied; dnsd frames it like its own answers (EDNS, truncation).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{LowerQuery, ResponseCode};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, Record};

use crate::reply::Reply;

/// The longest a forwarded question may take, all upstreams and retries included;
/// after it the client gets SERVFAIL.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(2);
/// How long one attempt at one upstream may take before the next is tried.
const UPSTREAM_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
/// Attempts per upstream within [`FORWARD_DEADLINE`].
const UPSTREAM_ATTEMPTS: usize = 2;

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// An upstream is not `IP` or `IP:PORT` (settings validation normally catches this).
    #[error("dns.upstreams[{index}]: {text:?} is not an IP address or IP:PORT")]
    Upstream {
        /// Position in `dns.upstreams`.
        index: usize,
        /// The entry.
        text: String,
    },
    /// hickory-resolver refused the configuration.
    #[error("building the forwarding resolver: {0}")]
    Resolver(#[from] NetError),
}

/// Forwards questions to the upstreams, or refuses them when there are none.
pub struct Forwarder {
    resolver: Option<TokioResolver>,
    upstreams: Vec<SocketAddr>,
}

impl Forwarder {
    /// A forwarder to `upstreams` (`IP` or `IP:PORT` each); none gives one that refuses.
    pub fn new(upstreams: &[String]) -> Result<Self, ForwardError> {
        let upstreams = upstreams
            .iter()
            .enumerate()
            .map(|(index, text)| {
                securely_core::settings::parse_upstream(text).ok_or_else(|| {
                    ForwardError::Upstream {
                        index,
                        text: text.clone(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if upstreams.is_empty() {
            return Ok(Self {
                resolver: None,
                upstreams,
            });
        }
        let name_servers = upstreams
            .iter()
            .map(|addr| {
                let connection = |protocol| {
                    let mut connection = ConnectionConfig::new(protocol);
                    connection.port = addr.port();
                    connection
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ProtocolConfig::Udp),
                        connection(ProtocolConfig::Tcp),
                    ],
                )
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let mut options = ResolverOpts::default();
        options.timeout = UPSTREAM_ATTEMPT_TIMEOUT;
        options.attempts = UPSTREAM_ATTEMPTS;
        // Answers come from the upstreams only, never from this machine's hosts file.
        options.use_hosts_file = ResolveHosts::Never;
        // A forwarder passes CNAME chains on (RFC 1034 section 4.3.2).
        options.preserve_intermediates = true;
        options.recursion_desired = true;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        Ok(Self {
            resolver: Some(builder.build()?),
            upstreams,
        })
    }

    /// Whether there are upstreams (the RA flag of every reply says so).
    pub fn is_enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// The upstreams, for the status line.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Answers `query` from the upstreams: their answer, their NXDOMAIN or NODATA with
    /// its SOA, SERVFAIL when none answers within [`FORWARD_DEADLINE`], REFUSED when
    /// there are no upstreams.
    pub async fn forward(&self, query: &LowerQuery) -> Reply {
        let Some(resolver) = &self.resolver else {
            return Reply::empty(ResponseCode::Refused);
        };
        let name = Name::from(query.name());
        let qtype = query.query_type();
        let lookup =
            match tokio::time::timeout(FORWARD_DEADLINE, resolver.lookup(name, qtype)).await {
                Ok(lookup) => lookup,
                Err(_) => {
                    tracing::debug!(name = %query.name(), %qtype, "upstreams timed out");
                    return Reply::empty(ResponseCode::ServFail);
                }
            };
        match lookup {
            Ok(lookup) => Reply {
                answers: with_question_spelling(query, lookup.answers()),
                ..Reply::empty(ResponseCode::NoError)
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => Reply {
                authorities: no_records
                    .soa
                    .map(|soa| vec![soa.into_record_of_rdata()])
                    .unwrap_or_default(),
                ..Reply::empty(no_records.response_code)
            },
            Err(error) => {
                tracing::debug!(name = %query.name(), %qtype, %error, "forwarding failed");
                Reply::empty(ResponseCode::ServFail)
            }
        }
    }
}

/// The answers, with the records owned by the question's name spelled as the client
/// spelled it (the resolver asks, and caches, in lowercase).
fn with_question_spelling(query: &LowerQuery, answers: &[Record]) -> Vec<Record> {
    let asked = query.original().name();
    answers
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if record.name == *asked {
                record.name = asked.clone();
            }
            record
        })
        .collect()
}
