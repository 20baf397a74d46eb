//! Real DNS packets over UDP and TCP, built and parsed with hickory-proto.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// How long a test waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A query for `name`/`rtype` with recursion desired.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("query name"),
        rtype,
    ));
    message
}

/// Sends raw bytes over UDP and returns the raw reply, or `None` on timeout.
pub fn udp_raw(server: SocketAddr, packet: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    socket.send_to(packet, server).expect("send");
    let mut buf = vec![0u8; 65535];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// Asks `name`/`rtype` over UDP.
pub fn udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let packet = query(name, rtype).to_vec().expect("encode");
    let reply = udp_raw(server, &packet, ANSWER_TIMEOUT).expect("an answer over UDP");
    Message::from_vec(&reply).expect("a parseable answer")
}

/// Asks `name`/`rtype` over TCP (two-byte length prefix, RFC 1035 4.2.2).
pub fn tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    use std::io::{Read, Write};
    let packet = query(name, rtype).to_vec().expect("encode");
    let mut stream = std::net::TcpStream::connect(server).expect("connect over TCP");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).expect("send");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("an answer over TCP");
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).expect("the whole answer");
    Message::from_vec(&reply).expect("a parseable answer")
}

/// The answer section's values as text (e.g. "127.0.0.1"), in order.
pub fn answers(message: &Message) -> Vec<String> {
    message.answers.iter().map(|r| r.data.to_string()).collect()
}
