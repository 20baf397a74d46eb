//! dnsd's answering: the protocol checks, dispatch of the question, and framing of the
//! reply (EDNS, UDP size, flags) into the bytes to send. The serving loops
//! ([`crate::dns_server`]) hand every message they receive to
//! [`DnsHandler::handle`].
//!
//! Messages shorter than a header and responses (QR=1) get nothing; messages whose
//! sections do not parse (duplicate OPT included) get FORMERR (see [`crate::incoming`]).
//! Every other message gets BADVERS for EDNS versions above 0, NOTIMP for opcodes other
//! than QUERY, FORMERR unless there is exactly one question, REFUSED for classes other
//! than IN and for zone transfers, and then an answer from the local zone, the localhost
//! names, or the upstreams.
//!
//! Everything but forwarding is answered at once, without waiting, so that the loops
//! answer it inline. A question for the upstreams comes back as [`Handled::Forward`]:
//! [`DnsHandler::forwarded`] waits on the upstreams (up to
//! [`crate::forward::FORWARD_DEADLINE`]) and [`DnsHandler::encode`] frames the reply. At
//! most [`FORWARD_SLOTS`] questions are forwarded at a time; beyond that a question gets
//! SERVFAIL at once, as from a resolver that cannot answer right now, instead of more
//! upstream work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, LowerQuery, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::Semaphore;

use crate::forward::Forwarder;
use crate::incoming::{self, NotARequest};
use crate::local_zone::LocalZone;
use crate::localhost;
use crate::reply::Reply;
use crate::reply_size;

/// The EDNS version dnsd speaks (RFC 6891).
pub const EDNS_VERSION: u8 = 0;
/// The UDP payload dnsd advertises in its OPT record, and the most it sends over UDP
/// (the DNS Flag Day 2020 size, which avoids IP fragmentation).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// The UDP limit for a client without EDNS (RFC 1035 section 4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;
/// How many questions may be forwarded at once. Each holds a resolver lookup (timers,
/// upstream sockets) for up to the forwarding deadline, so a flood of names outside the
/// TLD is bounded here; 1024 is far above what a development machine asks for.
pub const FORWARD_SLOTS: usize = 1024;

/// What a message received calls for, once [`DnsHandler::handle`] has seen it.
#[derive(Debug)]
pub enum Handled {
    /// Nothing is sent back (shorter than a header, or a response).
    Dropped,
    /// The reply is encoded in the output buffer, ready to send.
    Reply,
    /// The question goes to the upstreams: [`DnsHandler::forwarded`], then
    /// [`DnsHandler::encode`].
    Forward(Box<Request>),
}

/// What to answer to a request, as far as it is known without waiting.
enum Answer {
    /// The reply, known at once.
    Now(Reply),
    /// The single question goes to the upstreams.
    Forward,
}

/// Answers DNS questions: the local TLD, localhost, and forwarding.
pub struct DnsHandler {
    zone: LocalZone,
    forwarder: Forwarder,
    localhost_ttl: u32,
    forward_slots: Semaphore,
    forward_limit: usize,
    /// Whether running out of forwarding slots was logged (once until one frees).
    forwarding_saturated: AtomicBool,
}

impl DnsHandler {
    /// A handler over `zone` and `forwarder` that forwards at most `forward_slots`
    /// questions at a time.
    pub fn new(
        zone: LocalZone,
        forwarder: Forwarder,
        localhost_ttl: u32,
        forward_slots: usize,
    ) -> Self {
        Self {
            zone,
            forwarder,
            localhost_ttl,
            forward_slots: Semaphore::new(forward_slots),
            forward_limit: forward_slots,
            forwarding_saturated: AtomicBool::new(false),
        }
    }

    /// Handles `message`, received from `src` over `protocol`, as far as it can be
    /// without waiting: a reply is encoded into `out` (emptied first) unless the message
    /// is dropped or its question is forwarded.
    pub fn handle(
        &self,
        message: &[u8],
        src: SocketAddr,
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Handled {
        let request = match incoming::read(message, src, protocol) {
            Ok(request) => request,
            Err(NotARequest::Dropped) => return Handled::Dropped,
            Err(NotARequest::Malformed(header)) => {
                incoming::encode_error(&header, ResponseCode::FormErr, out);
                return Handled::Reply;
            }
        };
        match self.answer_at_once(&request) {
            Answer::Now(reply) => {
                self.encode(&request, reply, out);
                Handled::Reply
            }
            Answer::Forward => Handled::Forward(Box::new(request)),
        }
    }

    /// The reply to a request [`DnsHandler::handle`] gave back as
    /// [`Handled::Forward`]: the upstreams' answer, or SERVFAIL.
    pub async fn forwarded(&self, request: &Request) -> Reply {
        match request.queries.queries() {
            [query] => self.forward(query).await,
            _ => Reply::empty(ResponseCode::FormErr),
        }
    }

    /// What to answer, before framing.
    #[cfg(test)]
    async fn reply_to(&self, request: &Request) -> Reply {
        match self.answer_at_once(request) {
            Answer::Now(reply) => reply,
            Answer::Forward => self.forwarded(request).await,
        }
    }

    /// What to answer, unless the question has to wait on the upstreams.
    fn answer_at_once(&self, request: &Request) -> Answer {
        if request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.version() > EDNS_VERSION)
        {
            return Answer::Now(Reply::empty(ResponseCode::BADVERS));
        }
        if request.metadata.op_code != OpCode::Query {
            return Answer::Now(Reply::empty(ResponseCode::NotImp));
        }
        let [query] = request.queries.queries() else {
            return Answer::Now(Reply::empty(ResponseCode::FormErr));
        };
        if query.query_class() != DNSClass::IN {
            return Answer::Now(Reply::empty(ResponseCode::Refused));
        }
        match query.query_type() {
            // No zone transfers: the zone is synthesised and has no secondaries.
            RecordType::AXFR | RecordType::IXFR => {
                return Answer::Now(Reply::empty(ResponseCode::Refused));
            }
            // OPT is a pseudo-type and cannot be asked for (RFC 6891 section 6.1.1).
            RecordType::OPT => return Answer::Now(Reply::empty(ResponseCode::FormErr)),
            _ => {}
        }
        if self.zone.contains(query.name()) {
            Answer::Now(self.zone.answer(query))
        } else if localhost::is_localhost(query) {
            Answer::Now(localhost::answer(query, self.localhost_ttl))
        } else if !self.forwarder.is_enabled() {
            // Refused without any upstream work.
            Answer::Now(Reply::empty(ResponseCode::Refused))
        } else {
            Answer::Forward
        }
    }

    /// Forwards `query` if a forwarding slot is free; SERVFAIL at once otherwise.
    async fn forward(&self, query: &LowerQuery) -> Reply {
        if !self.forwarder.is_enabled() {
            // Refused without any upstream work: no slot needed.
            return self.forwarder.forward(query).await;
        }
        let Ok(_slot) = self.forward_slots.try_acquire() else {
            if !self.forwarding_saturated.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    slots = self.forward_limit,
                    "every forwarding slot is busy; answering SERVFAIL to names outside the TLD until one frees"
                );
            }
            tracing::debug!(name = %query.name(), "no forwarding slot free; SERVFAIL");
            return Reply::empty(ResponseCode::ServFail);
        };
        if self.forwarding_saturated.load(Ordering::Relaxed)
            && self.forwarding_saturated.swap(false, Ordering::Relaxed)
        {
            tracing::info!("forwarding slots free again");
        }
        self.forwarder.forward(query).await
    }

    /// Frames `reply` for `request` and encodes it into `out` (emptied first). A reply
    /// that cannot be encoded becomes a bare SERVFAIL, as in hickory-server.
    pub fn encode(&self, request: &Request, reply: Reply, out: &mut Vec<u8>) {
        // A query with OPT gets OPT back (RFC 6891 section 6.1.1), without the DO bit:
        // dnsd does not sign or validate.
        let response_edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(ADVERTISED_UDP_PAYLOAD)
                .set_version(EDNS_VERSION);
            edns
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = self.forwarder.is_enabled();
        metadata.response_code = reply.code;

        let udp = request.protocol() == Protocol::Udp;
        let reply = if udp
            && !fits(
                request,
                response_edns.as_ref(),
                metadata,
                &reply,
                udp_payload_limit(request),
            ) {
            // RFC 2181 section 9: rather than a partial RRset, an empty answer with TC,
            // which keeps the OPT record and sends the client to TCP.
            metadata.truncation = true;
            Reply {
                answers: Vec::new(),
                authorities: Vec::new(),
                additionals: Vec::new(),
                ..reply
            }
        } else {
            reply
        };

        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            &reply.answers,
            &reply.authorities,
            [],
            &reply.additionals,
        );
        out.clear();
        let mut encoder = BinEncoder::new(out);
        // The encoder's own limit, as hickory-server sets it: a backstop behind `fits`.
        encoder.set_max_size(match (&response_edns, udp) {
            (Some(edns), true) => edns.max_payload(),
            (None, true) => PLAIN_UDP_PAYLOAD,
            (_, false) => u16::MAX,
        });
        if let Err(error) = response.destructive_emit(&mut encoder) {
            tracing::error!(src = %request.src(), %error, "encoding a reply failed; SERVFAIL instead");
            let mut metadata =
                Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            out.clear();
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            if header.emit(&mut BinEncoder::new(out)).is_err() {
                out.clear();
            }
        }
    }
}

/// The largest UDP reply `request` may get: what its OPT record allows, at most
/// [`ADVERTISED_UDP_PAYLOAD`], at least 512; 512 without EDNS.
fn udp_payload_limit(request: &Request) -> usize {
    let limit = match &request.edns {
        Some(edns) => edns
            .max_payload()
            .clamp(PLAIN_UDP_PAYLOAD, ADVERTISED_UDP_PAYLOAD),
        None => PLAIN_UDP_PAYLOAD,
    };
    usize::from(limit)
}

/// Whether the whole reply encodes within `limit` bytes: obviously when its upper bound
/// is within it, otherwise measured by encoding it.
fn fits(
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    reply: &Reply,
    limit: usize,
) -> bool {
    if reply_size::upper_bound(request.queries.as_bytes().len(), edns, reply)
        .is_some_and(|bound| bound <= limit)
    {
        return true;
    }
    let mut buffer = Vec::with_capacity(limit);
    let mut encoder = BinEncoder::new(&mut buffer);
    let encoded = MessageResponseBuilder::new(&request.queries, edns)
        .build(
            metadata,
            &reply.answers,
            &reply.authorities,
            [],
            &reply.additionals,
        )
        .destructive_emit(&mut encoder);
    match encoded {
        Ok(header) => !header.truncation && buffer.len() <= limit,
        Err(_) => false,
    }
}

/// A handler for the zone `test.` (addresses 127.0.0.1 and ::1, no explicit records)
/// forwarding to `upstreams`, for the unit tests of the serving loops.
#[cfg(test)]
pub fn handler_for_tests(upstreams: &[String]) -> DnsHandler {
    use securely_core::settings::DnsSettings;

    use crate::record_spec::ZoneNames;
    use crate::records::RecordStore;

    let settings = DnsSettings {
        tld: "test".into(),
        addresses: vec!["127.0.0.1".into(), "::1".into()],
        ..DnsSettings::default()
    };
    let store = std::sync::Arc::new(RecordStore::detached(&ZoneNames::new("test")));
    let zone = LocalZone::new(&settings, store).expect("zone");
    let forwarder = Forwarder::new(upstreams).expect("forwarder");
    DnsHandler::new(zone, forwarder, 60, FORWARD_SLOTS)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::{MX, TXT};
    use hickory_proto::rr::{Name, RData, Record};
    use securely_core::settings::DnsSettings;

    use super::*;
    use crate::forward::FORWARD_DEADLINE;
    use crate::record_spec::ZoneNames;
    use crate::records::RecordStore;

    fn question(name: &str, rtype: RecordType) -> Request {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        let src: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        Request::from_bytes(message.to_vec().unwrap(), src, Protocol::Udp).unwrap()
    }

    fn request(protocol: Protocol, payload: Option<u16>) -> Request {
        let mut message = Message::query();
        message.add_query(Query::query(
            Name::from_str("big.test.").unwrap(),
            RecordType::TXT,
        ));
        if let Some(payload) = payload {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            message.set_edns(edns);
        }
        let src: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        Request::from_bytes(message.to_vec().unwrap(), src, protocol).unwrap()
    }

    fn txt_reply(bytes: usize) -> Reply {
        let txt = TXT::new(vec!["x".repeat(200); bytes / 200]);
        Reply::authoritative(vec![Record::from_rdata(
            Name::from_str("big.test.").unwrap(),
            60,
            RData::TXT(txt),
        )])
    }

    fn bytes(message: &Message) -> Vec<u8> {
        message.to_vec().unwrap()
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5300".parse().unwrap()
    }

    #[test]
    fn local_names_are_answered_at_once_and_others_forwarded() {
        let handler = handler_for_tests(&["127.0.0.1:9".into()]);
        let mut out = Vec::new();
        let mut query = Message::query();
        query.metadata.id = 7;
        query.add_query(Query::query(
            Name::from_str("app.test.").unwrap(),
            RecordType::A,
        ));
        let handled = handler.handle(&bytes(&query), src(), Protocol::Udp, &mut out);
        assert!(matches!(handled, Handled::Reply), "{handled:?}");
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.id, 7);
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.answers[0].data.to_string(), "127.0.0.1");

        let mut outside = Message::query();
        outside.add_query(Query::query(
            Name::from_str("example.com.").unwrap(),
            RecordType::A,
        ));
        let handled = handler.handle(&bytes(&outside), src(), Protocol::Udp, &mut out);
        assert!(matches!(handled, Handled::Forward(_)), "{handled:?}");

        // Without upstreams, REFUSED at once.
        let refusing = handler_for_tests(&[]);
        let handled = refusing.handle(&bytes(&outside), src(), Protocol::Tcp, &mut out);
        assert!(matches!(handled, Handled::Reply), "{handled:?}");
        assert_eq!(
            Message::from_vec(&out).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn malformed_messages_get_formerr_and_responses_nothing() {
        let handler = handler_for_tests(&[]);
        let mut out = Vec::new();
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_str("app.test.").unwrap(),
            RecordType::A,
        ));
        let encoded = bytes(&query);
        let handled = handler.handle(&encoded[..12], src(), Protocol::Udp, &mut out);
        assert!(matches!(handled, Handled::Reply), "{handled:?}");
        assert_eq!(
            Message::from_vec(&out).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        let mut response = encoded.clone();
        response[2] |= 0x80;
        let handled = handler.handle(&response, src(), Protocol::Udp, &mut out);
        assert!(matches!(handled, Handled::Dropped), "{handled:?}");
        let handled = handler.handle(&encoded[..5], src(), Protocol::Udp, &mut out);
        assert!(matches!(handled, Handled::Dropped), "{handled:?}");
    }

    #[test]
    fn replies_too_big_for_udp_are_truncated_but_not_over_tcp() {
        let handler = handler_for_tests(&[]);
        let mut out = Vec::new();
        for (protocol, truncated) in [(Protocol::Udp, true), (Protocol::Tcp, false)] {
            handler.encode(&request(protocol, None), txt_reply(600), &mut out);
            let reply = Message::from_vec(&out).unwrap();
            assert_eq!(reply.metadata.truncation, truncated, "{protocol}");
            assert_eq!(reply.answers.is_empty(), truncated, "{protocol}");
        }
    }

    #[test]
    fn udp_limit_follows_the_clients_opt_within_bounds() {
        assert_eq!(udp_payload_limit(&request(Protocol::Udp, None)), 512);
        assert_eq!(udp_payload_limit(&request(Protocol::Udp, Some(4096))), 1232);
        assert_eq!(udp_payload_limit(&request(Protocol::Udp, Some(800))), 800);
        assert_eq!(udp_payload_limit(&request(Protocol::Udp, Some(100))), 512);
    }

    #[test]
    fn replies_are_measured_whole() {
        let req = request(Protocol::Udp, None);
        let metadata = Metadata::new(1, MessageType::Response, OpCode::Query);
        assert!(fits(&req, None, metadata, &txt_reply(200), 512));
        assert!(!fits(&req, None, metadata, &txt_reply(600), 512));
        assert!(fits(&req, None, metadata, &txt_reply(600), 1232));
        // Types without a cheap bound (forwarded answers) are measured.
        let mx = Reply::authoritative(
            (0..40)
                .map(|i| {
                    let exchange = Name::from_str(&format!("mail{i}.example.com.")).unwrap();
                    Record::from_rdata(
                        Name::from_str("big.test.").unwrap(),
                        60,
                        RData::MX(MX::new(10, exchange)),
                    )
                })
                .collect(),
        );
        assert!(!fits(&req, None, metadata, &mx, 512));
        assert!(fits(&req, None, metadata, &mx, 1232));
    }

    #[tokio::test]
    async fn forwarding_beyond_the_slots_is_servfail_at_once_and_local_names_still_answer() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = Arc::new(RecordStore::open(db, dir.path(), &ZoneNames::new("test")).unwrap());
        let settings = DnsSettings {
            addresses: vec!["127.0.0.1".into()],
            ..DnsSettings::default()
        };
        let zone = LocalZone::new(&settings, store).unwrap();
        // An upstream that never answers keeps a forwarded question waiting.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let forwarder = Forwarder::new(&[silent.local_addr().unwrap().to_string()]).unwrap();
        let handler = Arc::new(DnsHandler::new(zone, forwarder, 60, 1));

        let waiting = tokio::spawn({
            let handler = handler.clone();
            async move {
                let request = question("example.com.", RecordType::A);
                handler.reply_to(&request).await
            }
        });
        tokio::time::timeout(Duration::from_secs(1), async {
            while handler.forward_slots.available_permits() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the first question takes the only slot");

        let started = Instant::now();
        let refused = handler
            .reply_to(&question("example.org.", RecordType::A))
            .await;
        assert_eq!(refused.code, ResponseCode::ServFail);
        assert!(
            started.elapsed() < FORWARD_DEADLINE / 4,
            "answered without waiting on the upstreams: {:?}",
            started.elapsed()
        );
        let local = handler
            .reply_to(&question("app.test.", RecordType::A))
            .await;
        assert_eq!(local.code, ResponseCode::NoError);
        assert_eq!(local.answers[0].data.to_string(), "127.0.0.1");
        let localhost = handler
            .reply_to(&question("localhost.", RecordType::A))
            .await;
        assert_eq!(localhost.answers[0].data.to_string(), "127.0.0.1");

        waiting.abort();
        let _ = waiting.await;
        assert_eq!(handler.forward_slots.available_permits(), 1, "slot freed");
    }
}
