//! The local TLD: every name under it exists and is answered here, never forwarded.
//!
//! Addresses are synthesised for any name at any depth from the configured
//! `dns.addresses` (not stored as a wildcard record). A name with explicit records is
//! defined by them alone (for every type), a CNAME is followed while its target stays
//! inside the zone, and the apex carries the zone's SOA and NS. Types a name lacks get
//! NODATA with the SOA in the authority section (RFC 2308); there is no NXDOMAIN here.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::LowerQuery;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use securely_core::names::normalize_tld;
use securely_core::settings::DnsSettings;

use crate::records::{ExplicitRecord, RecordStore};
use crate::reply::Reply;

/// The name server's label under the TLD (`ns.test.`).
const NS_LABEL: &str = "ns";
/// The SOA mailbox's label under the TLD (`hostmaster.test.`).
const HOSTMASTER_LABEL: &str = "hostmaster";
// SOA REFRESH, RETRY and EXPIRE matter only to secondaries, and there are none; the
// values are RIPE-203's recommendations.
/// SOA REFRESH, in seconds.
const SOA_REFRESH: i32 = 86_400;
/// SOA RETRY, in seconds.
const SOA_RETRY: i32 = 7_200;
/// SOA EXPIRE, in seconds.
const SOA_EXPIRE: i32 = 3_600_000;
/// How many CNAMEs inside the zone an answer follows before giving up (a loop).
pub const MAX_CNAME_CHAIN: usize = 8;

/// Why the zone could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// `dns.tld` is not a name (settings validation normally catches this).
    #[error("dns.tld {tld:?}: {reason}")]
    Tld {
        /// The configured TLD.
        tld: String,
        /// The reason.
        reason: String,
    },
}

/// The local zone's answers.
pub struct LocalZone {
    origin: LowerName,
    apex: Name,
    ns_name: Name,
    hostmaster: Name,
    ipv4: Vec<RData>,
    ipv6: Vec<RData>,
    ttl: u32,
    records: Arc<RecordStore>,
}

/// What one name holds for one query type.
enum NameData {
    /// Records of the type (or, for ANY, of one type).
    Records(Vec<Record>),
    /// A CNAME record and its target, to follow.
    Alias(Box<(Record, Name)>),
    /// Nothing of the type.
    NoData,
}

impl LocalZone {
    /// The zone described by `settings`, with explicit records from `records`.
    pub fn new(settings: &DnsSettings, records: Arc<RecordStore>) -> Result<Self, ZoneError> {
        // `Settings::resolve` normalises the TLD already; settings built by hand may not be.
        let tld = normalize_tld(&settings.tld);
        let tld_error = |e: hickory_proto::ProtoError| ZoneError::Tld {
            tld: settings.tld.clone(),
            reason: e.to_string(),
        };
        let apex = Name::from_ascii(format!("{tld}.")).map_err(tld_error)?;
        let ns_name = Name::from_ascii(format!("{NS_LABEL}.{tld}.")).map_err(tld_error)?;
        let hostmaster =
            Name::from_ascii(format!("{HOSTMASTER_LABEL}.{tld}.")).map_err(tld_error)?;
        let addresses: Vec<IpAddr> = settings
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        Ok(Self {
            origin: LowerName::from(&apex),
            apex,
            ns_name,
            hostmaster,
            ipv4: addresses
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            ipv6: addresses
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            ttl: settings.ttl,
            records,
        })
    }

    /// The zone's apex, e.g. `test.`.
    pub fn apex(&self) -> &Name {
        &self.apex
    }

    /// Whether `name` is the apex or under it.
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// Answers a question about a name inside the zone.
    pub fn answer(&self, query: &LowerQuery) -> Reply {
        let qtype = query.query_type();
        let mut answers = Vec::new();
        // The first owner keeps the question's spelling, so answers match a 0x20 query.
        let mut owner = query.original().name().clone();
        let mut name = query.name().clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            match self.name_data(&owner, &name, qtype) {
                NameData::Records(records) => {
                    answers.extend(records);
                    let mut reply = Reply::authoritative(answers);
                    if qtype == RecordType::NS && name == self.origin {
                        reply.additionals = self.glue();
                    }
                    return reply;
                }
                NameData::NoData => {
                    // NODATA, after any CNAMEs that led here (RFC 2308 section 2.2).
                    let mut reply = Reply::authoritative(answers);
                    reply.authorities = vec![self.negative_soa()];
                    return reply;
                }
                NameData::Alias(alias) => {
                    let (cname, target) = *alias;
                    answers.push(cname);
                    let target_lower = LowerName::from(&target);
                    if !self.contains(&target_lower) {
                        // The client's resolver follows targets outside the zone.
                        return Reply::authoritative(answers);
                    }
                    owner = target;
                    name = target_lower;
                }
            }
        }
        tracing::warn!(
            name = %query.name(),
            "CNAME chain longer than {MAX_CNAME_CHAIN} (a loop?); answering SERVFAIL"
        );
        Reply::empty(hickory_proto::op::ResponseCode::ServFail)
    }

    /// The zone's SOA record as the apex serves it.
    pub fn soa(&self) -> Record {
        let soa = SOA::new(
            self.ns_name.clone(),
            self.hostmaster.clone(),
            self.records.serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.ttl,
        );
        Record::from_rdata(self.apex.clone(), self.ttl, RData::SOA(soa))
    }

    /// The SOA for a negative answer: its TTL is min(SOA TTL, MINIMUM) (RFC 2308 section 5).
    fn negative_soa(&self) -> Record {
        let mut soa = self.soa();
        if let RData::SOA(data) = &soa.data {
            soa.ttl = soa.ttl.min(data.minimum);
        }
        soa
    }

    fn name_data(&self, owner: &Name, name: &LowerName, qtype: RecordType) -> NameData {
        if *name == self.origin {
            match qtype {
                RecordType::SOA => {
                    let mut soa = self.soa();
                    soa.name = owner.clone();
                    return NameData::Records(vec![soa]);
                }
                RecordType::NS => {
                    let ns = RData::NS(NS(self.ns_name.clone()));
                    return NameData::Records(vec![Record::from_rdata(
                        owner.clone(),
                        self.ttl,
                        ns,
                    )]);
                }
                _ => {}
            }
        }
        match self.records.lookup(name) {
            Some(explicit) => self.explicit_data(owner, &explicit, qtype),
            None => self.synthesised_data(owner, qtype),
        }
    }

    /// A name with explicit records is what they say, for every type.
    fn explicit_data(
        &self,
        owner: &Name,
        explicit: &[ExplicitRecord],
        qtype: RecordType,
    ) -> NameData {
        let of_type = |rtype: RecordType| -> Vec<Record> {
            explicit
                .iter()
                .filter(|r| r.kind.record_type() == rtype)
                .map(|r| {
                    let ttl = if r.ttl == 0 { self.ttl } else { r.ttl };
                    Record::from_rdata(owner.clone(), ttl, r.rdata.clone())
                })
                .collect()
        };
        if qtype == RecordType::ANY {
            // RFC 8482: one RRset is a complete answer to ANY.
            return crate::record_spec::RecordKind::ALL
                .into_iter()
                .map(|kind| of_type(kind.record_type()))
                .find(|set| !set.is_empty())
                .map_or(NameData::NoData, NameData::Records);
        }
        let records = of_type(qtype);
        if !records.is_empty() {
            return NameData::Records(records);
        }
        match of_type(RecordType::CNAME).into_iter().next() {
            Some(cname) => match &cname.data {
                RData::CNAME(target) => {
                    let target = target.0.clone();
                    NameData::Alias(Box::new((cname, target)))
                }
                _ => NameData::NoData,
            },
            None => NameData::NoData,
        }
    }

    /// Any other name holds the configured addresses and nothing else.
    fn synthesised_data(&self, owner: &Name, qtype: RecordType) -> NameData {
        let addresses = match qtype {
            RecordType::A => &self.ipv4,
            RecordType::AAAA => &self.ipv6,
            // RFC 8482: the A records (or AAAA) answer ANY.
            RecordType::ANY if !self.ipv4.is_empty() => &self.ipv4,
            RecordType::ANY => &self.ipv6,
            _ => return NameData::NoData,
        };
        if addresses.is_empty() {
            return NameData::NoData;
        }
        NameData::Records(
            addresses
                .iter()
                .map(|rdata| Record::from_rdata(owner.clone(), self.ttl, rdata.clone()))
                .collect(),
        )
    }

    /// The addresses of the NS name, for the additional section of an NS answer.
    fn glue(&self) -> Vec<Record> {
        let ns = LowerName::from(&self.ns_name);
        [RecordType::A, RecordType::AAAA]
            .into_iter()
            .flat_map(|rtype| match self.name_data(&self.ns_name, &ns, rtype) {
                NameData::Records(records) => records,
                NameData::Alias(_) | NameData::NoData => Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Query, ResponseCode};

    use super::*;
    use crate::record_spec::{RecordSpec, ZoneNames};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<RecordStore>,
        zone: LocalZone,
    }

    fn fixture(addresses: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = Arc::new(RecordStore::open(db, dir.path(), &ZoneNames::new("test")).unwrap());
        let settings = DnsSettings {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ttl: 60,
            ..DnsSettings::default()
        };
        let zone = LocalZone::new(&settings, store.clone()).unwrap();
        Fixture {
            _dir: dir,
            store,
            zone,
        }
    }

    fn set(f: &Fixture, name: &str, kind: &str, value: &str) {
        let spec = RecordSpec::parse(&ZoneNames::new("test"), name, kind, value, 0).unwrap();
        f.store.set(spec).unwrap();
    }

    fn ask(zone: &LocalZone, name: &str, rtype: RecordType) -> Reply {
        let query = Query::query(Name::from_ascii(name).unwrap(), rtype);
        zone.answer(&LowerQuery::from(query))
    }

    fn rdata(reply: &Reply) -> Vec<String> {
        reply.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn any_depth_gets_the_configured_addresses() {
        let f = fixture(&["127.0.0.1", "::1"]);
        for name in ["a.test.", "x.y.z.test.", "test."] {
            let a = ask(&f.zone, name, RecordType::A);
            assert_eq!(a.code, ResponseCode::NoError);
            assert!(a.authoritative);
            assert_eq!(rdata(&a), vec!["127.0.0.1"], "{name}");
            assert_eq!(a.answers[0].ttl, 60);
            assert_eq!(rdata(&ask(&f.zone, name, RecordType::AAAA)), vec!["::1"]);
        }
        assert!(
            f.zone
                .contains(&LowerName::from_str("DEEP.Sub.TEST.").unwrap())
        );
        assert!(!f.zone.contains(&LowerName::from_str("latest.").unwrap()));
    }

    #[test]
    fn missing_types_are_nodata_with_the_soa() {
        let f = fixture(&["127.0.0.1"]);
        for (name, rtype) in [
            ("a.test.", RecordType::MX),
            ("a.test.", RecordType::AAAA),
            ("a.b.test.", RecordType::TXT),
        ] {
            let reply = ask(&f.zone, name, rtype);
            assert_eq!(reply.code, ResponseCode::NoError);
            assert!(reply.answers.is_empty());
            assert_eq!(reply.authorities.len(), 1);
            assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
            assert_eq!(reply.authorities[0].ttl, 60);
        }
    }

    #[test]
    fn the_apex_has_soa_and_ns_with_glue() {
        let f = fixture(&["10.1.2.3", "fd00::1"]);
        let soa = ask(&f.zone, "test.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        let RData::SOA(data) = &soa.answers[0].data else {
            panic!("not a SOA")
        };
        assert_eq!(data.mname.to_string(), "ns.test.");
        let serial = data.serial;
        set(&f, "x.test", "A", "10.0.0.9");
        let RData::SOA(data) = &ask(&f.zone, "test.", RecordType::SOA).answers[0].data else {
            panic!("not a SOA")
        };
        assert!(data.serial > serial);

        let ns = ask(&f.zone, "TEST.", RecordType::NS);
        assert_eq!(rdata(&ns), vec!["ns.test."]);
        assert_eq!(ns.answers[0].name.to_string(), "TEST.");
        let glue: Vec<String> = ns.additionals.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(glue, vec!["10.1.2.3", "fd00::1"]);
        assert_eq!(
            rdata(&ask(&f.zone, "ns.test.", RecordType::A)),
            vec!["10.1.2.3"]
        );
    }

    #[test]
    fn answers_keep_the_question_spelling() {
        let f = fixture(&["127.0.0.1"]);
        let reply = ask(&f.zone, "ApI.TeSt.", RecordType::A);
        assert_eq!(reply.answers[0].name.to_string(), "ApI.TeSt.");
    }

    #[test]
    fn explicit_records_define_their_name() {
        let f = fixture(&["127.0.0.1", "::1"]);
        set(&f, "api.test", "A", "10.0.0.1");
        set(&f, "api.test", "A", "10.0.0.2");
        set(&f, "api.test", "TXT", "hello");
        assert_eq!(
            rdata(&ask(&f.zone, "api.test.", RecordType::A)),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        let aaaa = ask(&f.zone, "api.test.", RecordType::AAAA);
        assert!(aaaa.answers.is_empty(), "explicit set has no AAAA");
        assert_eq!(aaaa.authorities.len(), 1);
        assert_eq!(
            rdata(&ask(&f.zone, "api.test.", RecordType::TXT)),
            vec!["hello"]
        );
        // Subnames still get the synthesis.
        assert_eq!(
            rdata(&ask(&f.zone, "v1.api.test.", RecordType::A)),
            vec!["127.0.0.1"]
        );
        f.store.unset("api.test", None).unwrap();
        assert_eq!(
            rdata(&ask(&f.zone, "api.test.", RecordType::A)),
            vec!["127.0.0.1"]
        );
    }

    #[test]
    fn cnames_are_followed_inside_the_zone() {
        let f = fixture(&["127.0.0.1"]);
        set(&f, "web.test", "A", "10.0.0.5");
        set(&f, "www.test", "CNAME", "web.test");
        set(&f, "out.test", "CNAME", "example.com");
        let a = ask(&f.zone, "www.test.", RecordType::A);
        assert_eq!(rdata(&a), vec!["web.test.", "10.0.0.5"]);
        assert_eq!(a.answers[1].name.to_string(), "web.test.");
        let cname = ask(&f.zone, "www.test.", RecordType::CNAME);
        assert_eq!(rdata(&cname), vec!["web.test."]);
        let mx = ask(&f.zone, "www.test.", RecordType::MX);
        assert_eq!(rdata(&mx), vec!["web.test."]);
        assert_eq!(mx.authorities.len(), 1);
        assert_eq!(
            rdata(&ask(&f.zone, "out.test.", RecordType::A)),
            vec!["example.com."]
        );
        // A CNAME to a name without explicit records reaches the synthesis.
        set(&f, "alias.test", "CNAME", "plain.test");
        assert_eq!(
            rdata(&ask(&f.zone, "alias.test.", RecordType::A)),
            vec!["plain.test.", "127.0.0.1"]
        );
    }

    #[test]
    fn cname_loops_end_in_servfail() {
        let f = fixture(&["127.0.0.1"]);
        set(&f, "a.test", "CNAME", "b.test");
        set(&f, "b.test", "CNAME", "a.test");
        assert_eq!(
            ask(&f.zone, "a.test.", RecordType::A).code,
            ResponseCode::ServFail
        );
    }

    #[test]
    fn any_gets_one_rrset() {
        let f = fixture(&["127.0.0.1", "::1"]);
        assert_eq!(
            rdata(&ask(&f.zone, "a.test.", RecordType::ANY)),
            vec!["127.0.0.1"]
        );
        set(&f, "t.test", "TXT", "only");
        assert_eq!(
            rdata(&ask(&f.zone, "t.test.", RecordType::ANY)),
            vec!["only"]
        );
        let v6 = fixture(&["::1"]);
        assert_eq!(
            rdata(&ask(&v6.zone, "a.test.", RecordType::ANY)),
            vec!["::1"]
        );
    }
}
