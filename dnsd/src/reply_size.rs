//! A cheap upper bound on a reply's size on the wire, so that a UDP reply that obviously
//! fits its limit is encoded once (to be sent) rather than twice (to be measured first).
//!
//! The bound counts every name in full, as if nothing were compressed, so the encoded
//! reply is never larger. It is known for the record types dnsd answers itself (A, AAAA,
//! CNAME, NS, PTR, SOA, TXT); for any other type (forwarded answers) it is unknown and
//! the reply has to be measured by encoding it.

use hickory_proto::op::Edns;
use hickory_proto::rr::rdata::{CNAME, NS, PTR};
use hickory_proto::rr::{Name, RData, Record};

use crate::reply::Reply;

/// The DNS header.
const HEADER_LEN: usize = 12;
/// A resource record's TYPE, CLASS, TTL and RDLENGTH.
const RECORD_FIXED_LEN: usize = 10;
/// An OPT record without options: the root name plus the fixed fields.
const OPT_FIXED_LEN: usize = 1 + RECORD_FIXED_LEN;
/// An EDNS option's CODE and LENGTH.
const OPTION_FIXED_LEN: usize = 4;
/// A SOA's SERIAL, REFRESH, RETRY, EXPIRE and MINIMUM.
const SOA_NUMBERS_LEN: usize = 20;

/// At least the encoded size of `reply` after a question section of `question_len`
/// bytes, with `edns` as its OPT record; `None` when a record's type is not one the
/// bound knows.
pub fn upper_bound(question_len: usize, edns: Option<&Edns>, reply: &Reply) -> Option<usize> {
    let mut total = HEADER_LEN + question_len + edns.map_or(0, opt_len);
    for record in reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(&reply.additionals)
    {
        total += record_bound(record)?;
    }
    Some(total)
}

fn opt_len(edns: &Edns) -> usize {
    OPT_FIXED_LEN
        + edns
            .options()
            .options
            .iter()
            .map(|(_, option)| OPTION_FIXED_LEN + usize::from(option.len()))
            .sum::<usize>()
}

fn record_bound(record: &Record) -> Option<usize> {
    Some(name_bound(&record.name) + RECORD_FIXED_LEN + rdata_bound(&record.data)?)
}

/// A name uncompressed: one length byte per label, the label bytes, the root byte.
/// `Name::len` counts one dot per label plus the label bytes, so one more covers it.
fn name_bound(name: &Name) -> usize {
    name.len() + 1
}

fn rdata_bound(rdata: &RData) -> Option<usize> {
    Some(match rdata {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(CNAME(name)) | RData::NS(NS(name)) | RData::PTR(PTR(name)) => name_bound(name),
        RData::SOA(soa) => name_bound(&soa.mname) + name_bound(&soa.rname) + SOA_NUMBERS_LEN,
        // Each character-string is a length byte and its bytes.
        RData::TXT(txt) => txt.txt_data.iter().map(|chunk| 1 + chunk.len()).sum(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::RecordType;
    use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// The reply encoded as a whole message (no compression across it would only make
    /// it smaller), and its bound.
    fn encoded_and_bound(reply: &Reply, edns: Option<&Edns>) -> (usize, Option<usize>) {
        let query = Query::query(name("www.app.test."), RecordType::A);
        let mut message = Message::query();
        message.add_query(query.clone());
        let question_len = message.to_vec().unwrap().len() - HEADER_LEN;
        message.answers = reply.answers.clone();
        message.authorities = reply.authorities.clone();
        message.additionals = reply.additionals.clone();
        if let Some(edns) = edns {
            message.set_edns(edns.clone());
        }
        let encoded = message.to_vec().unwrap().len();
        (encoded, upper_bound(question_len, edns, reply))
    }

    #[test]
    fn the_bound_is_never_below_the_encoded_size() {
        let owner = name("www.app.test.");
        let soa = SOA::new(name("ns.test."), name("hostmaster.test."), 7, 1, 2, 3, 60);
        let replies = [
            Reply::empty(hickory_proto::op::ResponseCode::Refused),
            Reply::authoritative(vec![
                Record::from_rdata(owner.clone(), 60, RData::A(A::new(10, 0, 0, 1))),
                Record::from_rdata(
                    owner.clone(),
                    60,
                    RData::AAAA(AAAA(std::net::Ipv6Addr::LOCALHOST)),
                ),
                Record::from_rdata(owner.clone(), 60, RData::CNAME(CNAME(name("web.test.")))),
            ]),
            Reply {
                authorities: vec![Record::from_rdata(name("test."), 60, RData::SOA(soa))],
                ..Reply::authoritative(Vec::new())
            },
            Reply {
                additionals: vec![Record::from_rdata(
                    name("ns.test."),
                    60,
                    RData::A(A::new(127, 0, 0, 1)),
                )],
                ..Reply::authoritative(vec![Record::from_rdata(
                    name("test."),
                    60,
                    RData::NS(NS(name("ns.test."))),
                )])
            },
            Reply::authoritative(vec![Record::from_rdata(
                owner.clone(),
                60,
                RData::TXT(TXT::new(vec!["x".repeat(255), String::new(), "y".into()])),
            )]),
        ];
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        for (i, reply) in replies.iter().enumerate() {
            for edns in [None, Some(&edns)] {
                let (encoded, bound) = encoded_and_bound(reply, edns);
                let bound = bound.unwrap_or_else(|| panic!("reply {i}: no bound"));
                assert!(bound >= encoded, "reply {i}: bound {bound} < {encoded}");
            }
        }
        // Usual answers are known to fit without encoding them.
        let (_, bound) = encoded_and_bound(&replies[1], None);
        assert!(bound.is_some_and(|bound| bound <= 512), "{bound:?}");
    }

    #[test]
    fn other_types_have_no_bound() {
        let mx = Reply::authoritative(vec![Record::from_rdata(
            name("example.com."),
            60,
            RData::MX(MX::new(10, name("mail.example.com."))),
        )]);
        assert_eq!(upper_bound(20, None, &mx), None);
    }
}
