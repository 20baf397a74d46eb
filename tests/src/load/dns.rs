//! DNS load: queries for one name over UDP and TCP, each on a thread of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use super::Shared;
use crate::dns;

/// Asks dnsd at `server` for `name` (A) over TCP or UDP until the load stops.
pub(super) fn queries(server: SocketAddr, name: &str, tcp: bool, shared: &Shared) {
    let (transport, counter) = if tcp {
        ("TCP", &shared.counters.dns_tcp_ok)
    } else {
        ("UDP", &shared.counters.dns_udp_ok)
    };
    while shared.running() {
        let answer = if tcp {
            dns_tcp(server, name)
        } else {
            dns_udp(server, name)
        };
        match answer {
            Ok(message)
                if message.metadata.response_code == ResponseCode::NoError
                    && !message.answers.is_empty() =>
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(message) => shared.fail(format!(
                "DNS over {transport}: {:?} with {} answers",
                message.metadata.response_code,
                message.answers.len()
            )),
            Err(e) => shared.fail(format!("DNS over {transport}: {e}")),
        }
    }
}

fn dns_udp(server: SocketAddr, name: &str) -> Result<Message, String> {
    let packet = dns::query(name, RecordType::A)
        .to_vec()
        .map_err(|e| e.to_string())?;
    let reply = dns::udp_raw(server, &packet, dns::ANSWER_TIMEOUT).ok_or("no answer (lost)")?;
    Message::from_vec(&reply).map_err(|e| e.to_string())
}

fn dns_tcp(server: SocketAddr, name: &str) -> Result<Message, String> {
    use std::io::{Read, Write};
    let packet = dns::query(name, RecordType::A)
        .to_vec()
        .map_err(|e| e.to_string())?;
    let mut stream = std::net::TcpStream::connect(server).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(dns::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream
        .write_all(&framed)
        .map_err(|e| format!("send: {e}"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .map_err(|e| format!("read: {e}"))?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    Message::from_vec(&reply).map_err(|e| e.to_string())
}
