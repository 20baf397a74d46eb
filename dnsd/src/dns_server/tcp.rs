//! Serving one TCP listener: an accept loop, and a task per connection that reads
//! length-prefixed messages (RFC 1035 section 4.2.2) and answers them one at a time, in
//! order (as hickory-server does, so that one client cannot take more than one
//! question's worth of work at a time), forwarded questions included.
//!
//! Limits, after hickory-server's: each next message must have arrived whole within
//! [`TCP_IDLE_TIMEOUT`] of the previous reply (or of the accept), a reply must be
//! written within [`TCP_WRITE_TIMEOUT`], and at most [`MAX_TCP_CONNECTIONS`] are open
//! at once (beyond that, new connections wait in the listen backlog).
//!
//! On stop the loop accepts no further connection: the listen backlog is left to
//! whoever else accepts on the listener (the instance that took over). Each open
//! connection goes on answering whatever question it has begun to receive or receives
//! while busy, and closes once it has been idle at a message boundary for
//! [`DRAIN_QUIET`], which gives a client that has just connected the time to send its
//! question. A connection is closed cleanly: the write side first (the client reads
//! the end after its last answer), then whatever the client still sends is read and
//! dropped until it closes too (at most [`CLOSE_LINGER`]), so that closing never meets
//! unread data, which would reset the connection. The loop ends when every connection
//! has closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use securely_core::drain::InFlight;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stop::StopSignal;
use crate::handler::{DnsHandler, Handled};

/// How long a connection may take to deliver its next whole message after the previous
/// reply or the accept (hickory's idle timeout; RFC 7766 section 6.2.3 asks for
/// seconds, not minutes).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one reply may take (a client that does not read its answers).
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; more wait in the listen backlog until one closes.
const MAX_TCP_CONNECTIONS: usize = 512;
/// While draining, how long a connection idle at a message boundary waits for another
/// question before it closes.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// After the write side is closed, how long what the client still sends is read (and
/// dropped) while waiting for it to close its side.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// The pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How much is read at a time.
const READ_CHUNK: usize = 4096;
/// The length prefix of a message over TCP.
const LENGTH_PREFIX: usize = 2;

/// Serves `listener` with `handler` until `stop`, then lets the open connections finish.
/// Returns an error if the listener can no longer accept.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    mut stop: StopSignal,
    in_flight: Arc<InFlight>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.requested() => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        reap(&mut connections);
        let (stream, peer, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_unrecoverable(&error) => return Err(error),
            Err(error) => {
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    tracing::debug!(%error, "a connection went before it was accepted");
                } else {
                    tracing::warn!(%error, "accepting a DNS TCP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                continue;
            }
        };
        if slots.available_permits() == 0 {
            tracing::warn!(
                limit = MAX_TCP_CONNECTIONS,
                "every TCP connection slot is taken; new connections wait in the backlog"
            );
        }
        tracing::debug!(%peer, "accepted a DNS TCP connection");
        let connection = Connection::new(stream, peer, handler.clone(), stop.clone());
        let in_flight = in_flight.enter();
        connections.spawn(async move {
            let _slot = slot;
            let _in_flight = in_flight;
            connection.serve().await;
        });
    }
    drop(listener);
    if !connections.is_empty() {
        tracing::debug!(
            connections = connections.len(),
            "TCP: no longer accepting; finishing the open connections"
        );
    }
    while let Some(ended) = connections.join_next().await {
        log_panic(ended);
    }
    Ok(())
}

/// A connection, once a slot is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return Err(io::Error::other("the connection slots are closed"));
    };
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

fn reap(connections: &mut JoinSet<()>) {
    while let Some(ended) = connections.try_join_next() {
        log_panic(ended);
    }
}

fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "a DNS TCP connection panicked; closed it");
    }
}

/// Errors after which the listener cannot accept again.
fn is_unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::InvalidInput
    )
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<DnsHandler>,
    stop: StopSignal,
    /// Bytes read and not answered yet: whole messages first, then the start of one.
    received: Vec<u8>,
    /// A reply, encoded.
    reply: Vec<u8>,
    /// A reply with its length prefix, as written.
    framed: Vec<u8>,
}

/// Why a connection stops reading.
enum End {
    /// The client closed its side, or the connection failed: nothing more to do.
    Gone,
    /// dnsd closes it: idle too long, or quiet while draining.
    Close,
}

impl Connection {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        handler: Arc<DnsHandler>,
        stop: StopSignal,
    ) -> Self {
        // Each reply is written whole, at once: no reason to hold it back.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY failed");
        }
        Self {
            stream,
            peer,
            handler,
            stop,
            received: Vec::new(),
            reply: Vec::new(),
            framed: Vec::new(),
        }
    }

    async fn serve(mut self) {
        match self.answer_until_done().await {
            End::Gone => {}
            End::Close => self.close().await,
        }
    }

    /// Answers messages until the client goes, the connection idles too long, or it
    /// is quiet for [`DRAIN_QUIET`] at a message boundary while draining.
    async fn answer_until_done(&mut self) -> End {
        let mut deadline = Instant::now() + TCP_IDLE_TIMEOUT;
        // Set once draining: when a connection idle at a message boundary closes.
        let mut quiet_until: Option<Instant> = None;
        loop {
            while let Some(len) = whole_message(&self.received) {
                if !self.answer(len).await {
                    return End::Gone;
                }
                deadline = Instant::now() + TCP_IDLE_TIMEOUT;
                if let Some(quiet_until) = &mut quiet_until {
                    *quiet_until = Instant::now() + DRAIN_QUIET;
                }
            }
            let wake = match quiet_until {
                Some(quiet_until) if self.received.is_empty() => quiet_until.min(deadline),
                _ => deadline,
            };
            self.received.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.received) => match read {
                    Ok(0) => return End::Gone,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(peer = %self.peer, %error, "reading from a DNS TCP connection failed");
                        return End::Gone;
                    }
                },
                () = self.stop.requested(), if quiet_until.is_none() => {
                    quiet_until = Some(Instant::now() + DRAIN_QUIET);
                }
                () = tokio::time::sleep_until(wake) => {
                    if quiet_until.is_none() {
                        tracing::debug!(peer = %self.peer, "DNS TCP connection idle too long; closing it");
                    }
                    return End::Close;
                }
            }
        }
    }

    /// Answers the whole message of `len` bytes at the start of what was received, and
    /// takes it off. `false` if the reply could not be written.
    async fn answer(&mut self, len: usize) -> bool {
        let message = &self.received[LENGTH_PREFIX..LENGTH_PREFIX + len];
        let handled = self
            .handler
            .handle(message, self.peer, Protocol::Tcp, &mut self.reply);
        self.received.drain(..LENGTH_PREFIX + len);
        match handled {
            Handled::Dropped => true,
            Handled::Reply => self.write_reply().await,
            Handled::Forward(request) => {
                let reply = self.handler.forwarded(&request).await;
                self.handler.encode(&request, reply, &mut self.reply);
                self.write_reply().await
            }
        }
    }

    /// Writes the reply with its length prefix. `false` if that failed.
    async fn write_reply(&mut self) -> bool {
        if self.reply.is_empty() {
            return true;
        }
        let Ok(len) = u16::try_from(self.reply.len()) else {
            tracing::error!(peer = %self.peer, len = self.reply.len(), "a reply too long for TCP; dropped");
            return true;
        };
        self.framed.clear();
        self.framed.extend_from_slice(&len.to_be_bytes());
        self.framed.extend_from_slice(&self.reply);
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, self.stream.write_all(&self.framed)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "writing a DNS TCP reply failed");
                false
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "writing a DNS TCP reply timed out");
                false
            }
        }
    }

    /// Closes the write side, then reads (and drops) what the client still sends
    /// until it closes too, at most [`CLOSE_LINGER`].
    async fn close(mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 512];
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Ok(1..) = self.stream.read(&mut scratch).await {}
        })
        .await;
    }
}

/// The length of the first message in `received` if it is there whole.
fn whole_message(received: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_PREFIX] = received.get(..LENGTH_PREFIX)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes(prefix));
    (received.len() >= LENGTH_PREFIX + len).then_some(len)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::handler::handler_for_tests;

    const WAIT: Duration = Duration::from_secs(5);

    fn framed_query(id: u16, name: &str) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        let bytes = message.to_vec().unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        framed
    }

    async fn read_answer(stream: &mut TcpStream) -> Message {
        tokio::time::timeout(WAIT, async {
            let len = stream.read_u16().await.expect("a length prefix");
            let mut reply = vec![0u8; usize::from(len)];
            stream.read_exact(&mut reply).await.expect("the reply");
            Message::from_vec(&reply).unwrap()
        })
        .await
        .expect("an answer in time")
    }

    /// The connection ends with a clean close (FIN), not a reset.
    async fn assert_closed_cleanly(stream: &mut TcpStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert_eq!(read.expect("a clean close, no reset"), 0, "{rest:?}");
    }

    struct Served {
        addr: SocketAddr,
        /// Another instance's view of the same listener.
        successor: TcpListener,
        switch: tokio::sync::watch::Sender<bool>,
        serving: tokio::task::JoinHandle<io::Result<()>>,
    }

    fn start() -> Served {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let successor = TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
        let (switch, stop) = StopSignal::new();
        let serving = tokio::spawn(serve(
            TcpListener::from_std(listener).unwrap(),
            Arc::new(handler_for_tests(&[])),
            stop,
            InFlight::new(),
        ));
        Served {
            addr,
            successor,
            switch,
            serving,
        }
    }

    #[tokio::test]
    async fn pipelined_and_split_messages_are_answered_in_order() {
        let served = start();
        let mut client = TcpStream::connect(served.addr).await.unwrap();
        let mut both = framed_query(1, "one.test.");
        both.extend_from_slice(&framed_query(2, "two.test."));
        let third = framed_query(3, "three.test.");
        // Two messages in one write, then one in three pieces.
        client.write_all(&both).await.unwrap();
        client.write_all(&third[..1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&third[1..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&third[5..]).await.unwrap();
        for id in 1..=3 {
            let answer = read_answer(&mut client).await;
            assert_eq!(answer.metadata.id, id);
            assert_eq!(answer.answers[0].data.to_string(), "127.0.0.1");
        }
        // Garbage of the right length gets FORMERR, and the connection goes on.
        client
            .write_all(&[0, 12, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let formerr = read_answer(&mut client).await;
        assert_eq!(formerr.metadata.id, 9);
        client
            .write_all(&framed_query(4, "four.test."))
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client).await.metadata.id, 4);
        served.serving.abort();
    }

    #[tokio::test]
    async fn on_stop_questions_begun_are_answered_then_connections_close_cleanly() {
        let served = start();
        // One client is halfway through a question, one has said nothing yet, one is
        // idle after an answer.
        let mut halfway = TcpStream::connect(served.addr).await.unwrap();
        let question = framed_query(7, "app.test.");
        halfway.write_all(&question[..5]).await.unwrap();
        let mut silent = TcpStream::connect(served.addr).await.unwrap();
        let mut answered = TcpStream::connect(served.addr).await.unwrap();
        answered
            .write_all(&framed_query(8, "x.test."))
            .await
            .unwrap();
        assert_eq!(read_answer(&mut answered).await.metadata.id, 8);
        tokio::time::sleep(Duration::from_millis(20)).await;

        served.switch.send_replace(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The rest of the question comes after the stop: it is still answered.
        halfway.write_all(&question[5..]).await.unwrap();
        assert_eq!(read_answer(&mut halfway).await.metadata.id, 7);
        // A connection made after the stop is left in the backlog for the successor.
        let mut late = TcpStream::connect(served.addr).await.unwrap();
        late.write_all(&framed_query(9, "late.test."))
            .await
            .unwrap();

        for stream in [&mut halfway, &mut silent, &mut answered] {
            assert_closed_cleanly(stream).await;
        }
        tokio::time::timeout(WAIT, served.serving)
            .await
            .expect("the loop ends once its connections are closed")
            .unwrap()
            .unwrap();

        let (mut taken_over, _) = tokio::time::timeout(WAIT, served.successor.accept())
            .await
            .expect("the late connection waits in the backlog")
            .unwrap();
        let len = taken_over.read_u16().await.unwrap();
        let mut message = vec![0u8; usize::from(len)];
        taken_over.read_exact(&mut message).await.unwrap();
        assert_eq!(Message::from_vec(&message).unwrap().metadata.id, 9);
        drop(late);
    }

    #[tokio::test]
    async fn a_question_arriving_just_after_the_stop_on_a_new_connection_is_answered() {
        let served = start();
        let mut client = TcpStream::connect(served.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        served.switch.send_replace(true);
        tokio::time::sleep(DRAIN_QUIET / 4).await;
        client
            .write_all(&framed_query(5, "app.test."))
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client).await.metadata.id, 5);
        // The client closes first: nothing left to do.
        drop(client);
        tokio::time::timeout(WAIT, served.serving)
            .await
            .expect("the loop ends")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn whole_messages_are_recognised() {
        assert_eq!(whole_message(&[]), None);
        assert_eq!(whole_message(&[0]), None);
        assert_eq!(whole_message(&[0, 0]), Some(0));
        assert_eq!(whole_message(&[0, 3, 1, 2]), None);
        assert_eq!(whole_message(&[0, 3, 1, 2, 3, 4]), Some(3));
    }
}
