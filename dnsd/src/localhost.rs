//! `localhost.` and the names under it, answered locally (RFC 6761 section 6.3): A is
//! 127.0.0.1, AAAA is ::1, everything else is empty. They are never forwarded.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::LowerQuery;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::reply::Reply;

/// Whether the question is about a localhost name.
pub fn is_localhost(query: &LowerQuery) -> bool {
    query.original().name().is_localhost()
}

/// The answer for a localhost name, with `ttl`.
pub fn answer(query: &LowerQuery, ttl: u32) -> Reply {
    let rdata = match query.query_type() {
        // RFC 8482: the A record is a complete answer to ANY.
        RecordType::A | RecordType::ANY => Some(RData::A(A(Ipv4Addr::LOCALHOST))),
        RecordType::AAAA => Some(RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
        _ => None,
    };
    let owner = query.original().name().clone();
    Reply::authoritative(
        rdata
            .map(|rdata| Record::from_rdata(owner, ttl, rdata))
            .into_iter()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn ask(name: &str, rtype: RecordType) -> (bool, Reply) {
        let query = LowerQuery::from(Query::query(Name::from_str(name).unwrap(), rtype));
        (is_localhost(&query), answer(&query, 60))
    }

    #[test]
    fn loopback_addresses_for_localhost_names() {
        let (local, a) = ask("LocalHost.", RecordType::A);
        assert!(local);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
        let (local, aaaa) = ask("app.localhost.", RecordType::AAAA);
        assert!(local);
        assert_eq!(aaaa.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
        let (_, mx) = ask("localhost.", RecordType::MX);
        assert!(mx.answers.is_empty());
        assert!(!ask("localhost.example.", RecordType::A).0);
    }
}
