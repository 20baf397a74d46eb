//! A message as received, turned into a request to answer, an error to send back, or
//! nothing at all.
//!
//! The rules are hickory-server's: a message shorter than a header is dropped without
//! a word (there is no id to answer to), and one whose sections do not parse (a missing
//! question, a compression loop, a duplicate OPT) gets FORMERR with its id. Responses
//! (QR=1) are dropped before their sections are read, malformed or not, so that nothing
//! can be reflected off dnsd.

use std::net::SocketAddr;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

/// Why a message received is not a request to answer.
#[derive(Debug)]
pub enum NotARequest {
    /// Nothing is sent back: shorter than a header, or a response.
    Dropped,
    /// The header parsed but the rest did not: FORMERR to this header.
    Malformed(Header),
}

/// Reads `message`, received from `src` over `protocol`, as a request.
pub fn read(message: &[u8], src: SocketAddr, protocol: Protocol) -> Result<Request, NotARequest> {
    let Ok(header) = Header::read(&mut BinDecoder::new(message)) else {
        return Err(NotARequest::Dropped);
    };
    if header.metadata.message_type == MessageType::Response {
        return Err(NotARequest::Dropped);
    }
    Request::from_bytes(message.to_vec(), src, protocol).map_err(|error| {
        tracing::debug!(%src, id = header.metadata.id, %error, "malformed message; FORMERR");
        NotARequest::Malformed(header)
    })
}

/// Encodes into `out` (emptied first) a reply to `request` that carries only `code`:
/// the header, no question, no records.
pub fn encode_error(request: &Header, code: ResponseCode, out: &mut Vec<u8>) {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    out.clear();
    // A bare header always fits the encoder's buffer.
    if let Err(error) = header.emit(&mut BinEncoder::new(out)) {
        tracing::error!(%error, "encoding an error reply failed");
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn src() -> SocketAddr {
        "127.0.0.1:5300".parse().unwrap()
    }

    fn query_bytes() -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x4242;
        message.add_query(Query::query(
            Name::from_str("app.test.").unwrap(),
            RecordType::A,
        ));
        message.to_vec().unwrap()
    }

    #[test]
    fn queries_parse_and_short_messages_and_responses_are_dropped() {
        assert!(read(&query_bytes(), src(), Protocol::Udp).is_ok());
        assert!(matches!(
            read(&query_bytes()[..11], src(), Protocol::Udp),
            Err(NotARequest::Dropped)
        ));
        let mut response = query_bytes();
        response[2] |= 0x80; // QR
        assert!(matches!(
            read(&response, src(), Protocol::Udp),
            Err(NotARequest::Dropped)
        ));
        // Even a malformed response gets nothing back.
        assert!(matches!(
            read(&response[..12], src(), Protocol::Udp),
            Err(NotARequest::Dropped)
        ));
    }

    #[test]
    fn a_header_without_its_question_gets_formerr_with_its_id() {
        let Err(NotARequest::Malformed(header)) = read(&query_bytes()[..12], src(), Protocol::Tcp)
        else {
            panic!("expected a malformed message");
        };
        let mut out = Vec::new();
        encode_error(&header, ResponseCode::FormErr, &mut out);
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.id, 0x4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(reply.queries.is_empty());
    }
}
