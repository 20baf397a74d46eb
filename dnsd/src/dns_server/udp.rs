//! Serving one UDP socket: a loop that reads a datagram, answers it inline when the
//! answer is known at once (the local zone, localhost, errors: no task, one reused
//! output buffer), and hands a question for the upstreams to a task of its own that
//! sends the reply when it comes.
//!
//! On stop the loop reads no further datagram: those still queued on the socket are
//! left to whoever else reads it (the instance that took over) instead of being taken
//! and dropped. It then waits for its forwarded questions to be answered and sent, and
//! ends. Dropping the loop drops them too (the fast stop).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use hickory_server::net::xfer::Protocol;
use securely_core::drain::InFlight;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::stop::StopSignal;
use crate::handler::{ADVERTISED_UDP_PAYLOAD, DnsHandler, Handled};

/// The largest datagram read (hickory's receive buffer); the rest of a longer one is
/// cut off, which leaves it malformed.
const UDP_RECEIVE_BUFFER: usize = 4096;

/// Serves `socket` with `handler` until `stop`, then finishes the questions forwarded.
/// Returns an error if the socket can no longer be read.
pub async fn serve(
    socket: UdpSocket,
    handler: Arc<DnsHandler>,
    mut stop: StopSignal,
    in_flight: Arc<InFlight>,
) -> io::Result<()> {
    let socket = Arc::new(socket);
    let mut received = vec![0u8; UDP_RECEIVE_BUFFER];
    let mut out = Vec::with_capacity(usize::from(ADVERTISED_UDP_PAYLOAD));
    let mut forwarded = JoinSet::new();
    let stopped = stop.requested();
    tokio::pin!(stopped);
    loop {
        let (len, src) = tokio::select! {
            biased;
            () = &mut stopped => break,
            datagram = socket.recv_from(&mut received) => match datagram {
                Ok(datagram) => datagram,
                Err(error) if is_unrecoverable(&error) => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "receiving on a DNS UDP socket failed");
                    continue;
                }
            },
        };
        if !can_answer(src) {
            tracing::debug!(%src, "datagram from an address that cannot be answered; dropped");
            continue;
        }
        // A panic in answering one question must not end the loop.
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            handler.handle(&received[..len], src, Protocol::Udp, &mut out)
        }));
        match handled {
            Ok(Handled::Dropped) => {}
            Ok(Handled::Reply) => send(&socket, &out, src).await,
            Ok(Handled::Forward(request)) => {
                let handler = handler.clone();
                let socket = socket.clone();
                let in_flight = in_flight.enter();
                forwarded.spawn(async move {
                    let _in_flight = in_flight;
                    let reply = handler.forwarded(&request).await;
                    let mut out = Vec::new();
                    handler.encode(&request, reply, &mut out);
                    send(&socket, &out, src).await;
                });
            }
            Err(_) => tracing::error!(%src, "answering a question panicked; dropped it"),
        }
        while forwarded.try_join_next().is_some() {}
    }
    if !forwarded.is_empty() {
        tracing::debug!(
            forwarded = forwarded.len(),
            "UDP: no longer reading; finishing the forwarded questions"
        );
    }
    while forwarded.join_next().await.is_some() {}
    Ok(())
}

async fn send(socket: &UdpSocket, reply: &[u8], dst: SocketAddr) {
    if reply.is_empty() {
        return;
    }
    if let Err(error) = socket.send_to(reply, dst).await {
        tracing::debug!(%dst, %error, "sending a UDP reply failed");
    }
}

/// Errors after which the socket cannot be read again (hickory's list).
fn is_unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    )
}

/// Whether a reply can go to `src`: not port 0, not an unspecified or broadcast
/// address (hickory's checks, which keep dnsd from being used to reflect at those).
fn can_answer(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_broadcast(),
            IpAddr::V6(ip) => !ip.is_unspecified(),
        }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;
    use crate::dns_server::stop::StopSignal;
    use crate::handler::handler_for_tests;

    const WAIT: Duration = Duration::from_secs(5);

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    async fn answer(client: &UdpSocket) -> Message {
        let mut buffer = [0u8; 2048];
        let len = tokio::time::timeout(WAIT, client.recv(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        Message::from_vec(&buffer[..len]).unwrap()
    }

    /// An upstream that answers every A question with 10.9.9.9, after `delay`.
    async fn slow_upstream(delay: Duration) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                let Ok(question) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                tokio::time::sleep(delay).await;
                let mut reply = Message::new(
                    question.metadata.id,
                    MessageType::Response,
                    question.metadata.op_code,
                );
                reply.metadata.recursion_desired = question.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                for query in &question.queries {
                    reply.add_query(query.clone());
                    reply.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A::new(10, 9, 9, 9)),
                    ));
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn after_stop_datagrams_are_left_on_the_socket_and_forwarded_answers_still_go_out() {
        let upstream = slow_upstream(Duration::from_millis(300)).await;
        let handler = Arc::new(handler_for_tests(&[upstream.to_string()]));
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = std_socket.local_addr().unwrap();
        // The instance taking over reads the same socket.
        let successor = UdpSocket::from_std({
            let clone = std_socket.try_clone().unwrap();
            clone.set_nonblocking(true).unwrap();
            clone
        })
        .unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let socket = UdpSocket::from_std(std_socket).unwrap();
        let (switch, stop) = StopSignal::new();
        let in_flight = InFlight::new();
        let serving = tokio::spawn(serve(socket, handler, stop, in_flight.clone()));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        client.send(&query(1, "app.test.")).await.unwrap();
        assert_eq!(
            answer(&client).await.answers[0].data.to_string(),
            "127.0.0.1"
        );

        // A forwarded question is in flight when the stop comes.
        client.send(&query(2, "example.com.")).await.unwrap();
        tokio::time::timeout(WAIT, async {
            while in_flight.count() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the question is forwarded");
        switch.send_replace(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.send(&query(3, "app.test.")).await.unwrap();

        let forwarded = answer(&client).await;
        assert_eq!(forwarded.metadata.id, 2);
        assert_eq!(forwarded.metadata.response_code, ResponseCode::NoError);
        assert_eq!(forwarded.answers[0].data.to_string(), "10.9.9.9");
        tokio::time::timeout(WAIT, serving)
            .await
            .expect("the loop ends once the forwarded answer is out")
            .unwrap()
            .unwrap();

        // The question sent after the stop was not taken: it waits for the successor.
        let mut buffer = [0u8; 512];
        let (len, from) = tokio::time::timeout(WAIT, successor.recv_from(&mut buffer))
            .await
            .expect("the datagram is still on the socket")
            .unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(Message::from_vec(&buffer[..len]).unwrap().metadata.id, 3);
    }

    #[test]
    fn unanswerable_sources_are_recognised() {
        assert!(can_answer("127.0.0.1:5353".parse().unwrap()));
        assert!(can_answer("[::1]:5353".parse().unwrap()));
        assert!(!can_answer("127.0.0.1:0".parse().unwrap()));
        assert!(!can_answer("0.0.0.0:53".parse().unwrap()));
        assert!(!can_answer("255.255.255.255:53".parse().unwrap()));
        assert!(!can_answer("[::]:53".parse().unwrap()));
    }
}
