//! What an explicit record may be: validation of the admin API's arguments into the
//! canonical form dnsd stores and serves.
//!
//! Names are kept in presentation form, lowercase, without the trailing dot (`api.test`),
//! values canonical for their type (an address as Rust prints it, a CNAME target like a
//! name, TXT text as given), and a TTL of 0 stands for the configured default.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{LowerName, Name, RData, RecordType};
use securely_core::names::{is_within, normalize_hostname, normalize_tld};
use serde::{Deserialize, Serialize};

/// The largest TTL a record may carry (RFC 2181 section 8).
pub const MAX_TTL: u32 = 2_147_483_647;
/// The longest character-string inside a TXT record (RFC 1035 section 3.3).
pub const TXT_CHUNK_LEN: usize = 255;
/// The longest TXT value accepted: above any real use (DKIM keys take 1-2 KiB) while an
/// answer holding several such records still fits a DNS message over TCP.
pub const MAX_TXT_LEN: usize = 4096;

/// The record types the admin API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKind {
    /// An IPv4 address.
    A,
    /// An IPv6 address.
    Aaaa,
    /// An alias to another name.
    Cname,
    /// Free text.
    Txt,
}

impl RecordKind {
    /// Every kind, in the order answers and listings use.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Cname,
        RecordKind::A,
        RecordKind::Aaaa,
        RecordKind::Txt,
    ];

    /// Parses `A`, `AAAA`, `CNAME` or `TXT`, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The type's mnemonic, as the API and zone files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
            RecordKind::Cname => "CNAME",
            RecordKind::Txt => "TXT",
        }
    }

    /// The DNS record type.
    pub fn record_type(self) -> RecordType {
        match self {
            RecordKind::A => RecordType::A,
            RecordKind::Aaaa => RecordType::AAAA,
            RecordKind::Cname => RecordType::CNAME,
            RecordKind::Txt => RecordType::TXT,
        }
    }
}

/// An argument that cannot be accepted, naming the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidArgument {
    /// The request field (`name`, `type`, `value`, `ttl`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidArgument {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// The local TLD's naming rules.
#[derive(Debug, Clone)]
pub struct ZoneNames {
    tld: String,
}

impl ZoneNames {
    /// Rules for the zone `tld` (any case, with or without the trailing dot).
    pub fn new(tld: &str) -> Self {
        Self {
            tld: normalize_tld(tld),
        }
    }

    /// Checks that `text` names the TLD or a name under it; returns its canonical form.
    pub fn owner(&self, field: &'static str, text: &str) -> Result<String, InvalidArgument> {
        let name = canonical_name(field, text)?;
        if self.contains(&name) {
            Ok(name)
        } else {
            Err(InvalidArgument::new(
                field,
                format!(
                    "{text:?} is outside the local TLD {:?} (use a full name such as \"api.{}\")",
                    self.tld, self.tld
                ),
            ))
        }
    }

    /// Whether the canonical `name` is the TLD or under it.
    fn contains(&self, name: &str) -> bool {
        is_within(name, &self.tld)
    }

    fn is_apex(&self, name: &str) -> bool {
        name == self.tld
    }
}

/// A validated explicit record in canonical form; this is what the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSpec {
    /// The owner, e.g. `api.test`.
    pub name: String,
    /// The type.
    pub kind: RecordKind,
    /// The canonical value.
    pub value: String,
    /// Seconds; 0 follows the configured default.
    pub ttl: u32,
}

impl RecordSpec {
    /// Validates the admin API's fields.
    pub fn parse(
        names: &ZoneNames,
        name: &str,
        kind: &str,
        value: &str,
        ttl: u32,
    ) -> Result<Self, InvalidArgument> {
        let name = names.owner("name", name)?;
        let kind = parse_kind(kind)?;
        let value = match kind {
            RecordKind::A => value
                .trim()
                .parse::<Ipv4Addr>()
                .map(|ip| ip.to_string())
                .map_err(|_| {
                    InvalidArgument::new("value", format!("{value:?} is not an IPv4 address"))
                })?,
            RecordKind::Aaaa => value
                .trim()
                .parse::<Ipv6Addr>()
                .map(|ip| ip.to_string())
                .map_err(|_| {
                    InvalidArgument::new("value", format!("{value:?} is not an IPv6 address"))
                })?,
            RecordKind::Cname => {
                if names.is_apex(&name) {
                    return Err(InvalidArgument::new(
                        "name",
                        format!(
                            "the zone apex {name:?} holds the SOA and NS records and cannot be a CNAME"
                        ),
                    ));
                }
                let target = canonical_name("value", value)?;
                if target == name {
                    return Err(InvalidArgument::new(
                        "value",
                        format!("a CNAME cannot point at its own name {name:?}"),
                    ));
                }
                target
            }
            RecordKind::Txt => {
                if value.len() > MAX_TXT_LEN {
                    return Err(InvalidArgument::new(
                        "value",
                        format!(
                            "TXT text is {} bytes, at most {MAX_TXT_LEN} are accepted",
                            value.len()
                        ),
                    ));
                }
                value.to_string()
            }
        };
        if ttl > MAX_TTL {
            return Err(InvalidArgument::new(
                "ttl",
                format!("{ttl} is out of range 0..={MAX_TTL} (0 selects the default)"),
            ));
        }
        Ok(Self {
            name,
            kind,
            value,
            ttl,
        })
    }

    /// The owner as a DNS name.
    pub fn owner(&self) -> Result<LowerName, InvalidArgument> {
        owner_name(&self.name)
    }

    /// The record data served for this record.
    pub fn rdata(&self) -> Result<RData, InvalidArgument> {
        let invalid =
            |what: &str| InvalidArgument::new("value", format!("{:?} is not {what}", self.value));
        Ok(match self.kind {
            RecordKind::A => RData::A(A(self
                .value
                .parse()
                .map_err(|_| invalid("an IPv4 address"))?)),
            RecordKind::Aaaa => RData::AAAA(AAAA(
                self.value.parse().map_err(|_| invalid("an IPv6 address"))?,
            )),
            RecordKind::Cname => RData::CNAME(CNAME(fqdn("value", &self.value)?)),
            RecordKind::Txt => RData::TXT(txt(&self.value)),
        })
    }
}

/// Parses the `type` field.
pub fn parse_kind(text: &str) -> Result<RecordKind, InvalidArgument> {
    RecordKind::parse(text).ok_or_else(|| {
        InvalidArgument::new(
            "type",
            format!("{text:?} is not one of A, AAAA, CNAME, TXT"),
        )
    })
}

/// A canonical name (see [`ZoneNames::owner`]) as a DNS name.
pub fn owner_name(canonical: &str) -> Result<LowerName, InvalidArgument> {
    fqdn("name", canonical).map(LowerName::from)
}

/// TXT data: the text split into character-strings of at most [`TXT_CHUNK_LEN`] bytes.
fn txt(text: &str) -> TXT {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return TXT::from_bytes(vec![b"".as_slice()]);
    }
    TXT::from_bytes(bytes.chunks(TXT_CHUNK_LEN).collect())
}

/// A canonical name as a fully qualified DNS name.
fn fqdn(field: &'static str, name: &str) -> Result<Name, InvalidArgument> {
    Name::from_ascii(format!("{name}."))
        .map_err(|e| InvalidArgument::new(field, format!("{name:?} is not a valid name: {e}")))
}

/// Checks a name in presentation form (the hostname rules, with `_` allowed for names
/// such as `_acme-challenge.app.test`; a trailing dot allowed) and returns it lowercase
/// without the trailing dot.
fn canonical_name(field: &'static str, text: &str) -> Result<String, InvalidArgument> {
    normalize_hostname(text, true).map_err(|problem| InvalidArgument::new(field, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ZoneNames {
        ZoneNames::new("test")
    }

    fn parse(name: &str, kind: &str, value: &str) -> Result<RecordSpec, InvalidArgument> {
        RecordSpec::parse(&names(), name, kind, value, 0)
    }

    #[test]
    fn names_are_canonicalised_and_must_be_inside_the_tld() {
        let spec = parse("Api.TEST.", "a", "10.0.0.1").unwrap();
        assert_eq!(spec.name, "api.test");
        assert_eq!(spec.kind, RecordKind::A);
        assert_eq!(parse("test", "TXT", "apex").unwrap().name, "test");
        assert_eq!(
            parse("_acme-challenge.x.test", "TXT", "t").unwrap().name,
            "_acme-challenge.x.test"
        );

        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = format!("{}test", "a.".repeat(125));
        for (name, needle) in [
            ("api.example", "outside the local TLD"),
            ("latest", "outside the local TLD"),
            ("", "must not be empty"),
            ("a..test", "label \"\""),
            ("-a.test", "label \"-a\""),
            ("a b.test", "label \"a b\""),
            ("*.test", "label \"*\""),
            (long_label.as_str(), "1 to 63 characters"),
            (long_name.as_str(), "at most 253"),
        ] {
            let err = parse(name, "A", "10.0.0.1").unwrap_err();
            assert_eq!(err.field, "name", "{name}");
            assert!(err.problem.contains(needle), "{name}: {}", err.problem);
        }
    }

    #[test]
    fn values_must_parse_for_their_type() {
        assert_eq!(
            parse("a.test", "AAAA", "2001:DB8:0:0::1").unwrap().value,
            "2001:db8::1"
        );
        assert_eq!(
            parse("a.test", "cname", "Web.Test.").unwrap().value,
            "web.test"
        );
        assert_eq!(
            parse("a.test", "CNAME", "example.com").unwrap().value,
            "example.com"
        );
        for (kind, value) in [
            ("A", "::1"),
            ("A", "10.0.0.256"),
            ("AAAA", "10.0.0.1"),
            ("CNAME", "not a name"),
            ("CNAME", ""),
        ] {
            let err = parse("a.test", kind, value).unwrap_err();
            assert_eq!(err.field, "value", "{kind} {value}");
        }
        let err = parse("a.test", "MX", "10 mail.test").unwrap_err();
        assert_eq!(err.field, "type");
        assert!(err.problem.contains("A, AAAA, CNAME, TXT"));
    }

    #[test]
    fn cnames_cannot_sit_at_the_apex_or_point_at_themselves() {
        assert_eq!(
            parse("test", "CNAME", "web.test").unwrap_err().field,
            "name"
        );
        assert_eq!(
            parse("a.test", "CNAME", "A.test").unwrap_err().field,
            "value"
        );
    }

    #[test]
    fn ttl_is_bounded_and_zero_means_default() {
        assert_eq!(parse("a.test", "A", "10.0.0.1").unwrap().ttl, 0);
        let err = RecordSpec::parse(&names(), "a.test", "A", "10.0.0.1", MAX_TTL + 1).unwrap_err();
        assert_eq!(err.field, "ttl");
    }

    #[test]
    fn long_txt_is_split_into_character_strings() {
        let text = "x".repeat(600);
        let spec = parse("a.test", "TXT", &text).unwrap();
        let RData::TXT(txt) = spec.rdata().unwrap() else {
            panic!("not TXT")
        };
        let sizes: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
        assert_eq!(sizes, vec![255, 255, 90]);
        let too_long = "x".repeat(MAX_TXT_LEN + 1);
        assert_eq!(
            parse("a.test", "TXT", &too_long).unwrap_err().field,
            "value"
        );
        let RData::TXT(empty) = parse("a.test", "TXT", "").unwrap().rdata().unwrap() else {
            panic!("not TXT")
        };
        assert_eq!(empty.txt_data.len(), 1);
    }

    #[test]
    fn rdata_round_trips_every_kind() {
        let a = parse("a.test", "A", "10.0.0.1").unwrap().rdata().unwrap();
        assert_eq!(a, RData::A(A::new(10, 0, 0, 1)));
        let cname = parse("a.test", "CNAME", "web.test")
            .unwrap()
            .rdata()
            .unwrap();
        assert_eq!(
            cname,
            RData::CNAME(CNAME(Name::from_ascii("web.test.").unwrap()))
        );
        let owner = parse("_x.a.test", "TXT", "t").unwrap().owner().unwrap();
        assert_eq!(owner.to_string(), "_x.a.test.");
    }
}
