//! One WebSocket connection: one task that routes its frames through the
//! hall and drains its outbox to the socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use futures_util::{FutureExt, SinkExt, StreamExt};
use gathering_core::protocol::{
    CLOSE_FORBIDDEN, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_MOVED, CLOSE_POLICY,
    CLOSE_PROTOCOL, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED,
};
use gathering_core::{
    ConnId, Encoding, Frame, GatheringId, Inbound, SessionId, SessionJoin, SharedMember,
};
use gathering_driver::HallMail;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Front;
use super::auth::{Admission, Refusal};
use super::listen::Held;
use super::outbox::{Outbox, Outgoing, Queue};
use super::upgrade::Socket;

/// How long one frame may take to reach the client before the connection is
/// considered dead. The close frame gets a shorter bound: it is a courtesy.
const SEND_BOUND: Duration = Duration::from_secs(10);
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// The header of a server's pong (unmasked, payload at most 125 bytes).
const PONG_HEADER: usize = 2;

/// Who joins: as whom the authenticator let it in (`None` on an open
/// server), and with which session, if any.
pub struct Joining {
    /// The authenticator's answer.
    pub admission: Option<Admission>,
    /// The session it joins with.
    pub session: Option<Box<SessionJoin>>,
    /// Refused: the connection is closed with 4401 or 4403 and the reason
    /// (a page's join, which cannot read an HTTP refusal).
    pub refused: Option<Refusal>,
    /// Another cluster node holds the gathering, or this one drains: the
    /// connection is closed with 4001 and this reason (`node N at URL`
    /// names where to join).
    pub moved: Option<String>,
}

/// Serves one upgraded connection to gathering `id` until it closes.
///
/// One task per connection both reads (frames go to the hall) and writes
/// (the outbox goes to the socket): a second task, and the lock that split
/// halves share, cost every idle connection about a kilobyte. A plain fn
/// returning an `async move` block, so that the socket is held once (an
/// async fn would keep its argument beside the local it moves into).
#[allow(clippy::manual_async_fn)] // deliberately not one: see above
pub fn serve(
    mut socket: Socket,
    slot: Option<Held>,
    id: GatheringId,
    encoding: Encoding,
    joining: Joining,
    shared: Arc<Front>,
) -> impl Future<Output = ()> {
    // Taken apart here, not in the task: what a task captures stays in it
    // for its whole life. Open (no authenticator), the gathering names the
    // member after the connection, and only if it acts.
    // Everything a session or a refusal adds lives in `ends`' box: what
    // the task captures is what every idle connection holds.
    let mut ends = Ends::of(joining, shared.ping_interval);
    async move {
        // The connection's place under the listener's caps, for its life.
        let _slot = slot;
        if let Some(close) = ends.refusal() {
            let _ = tokio::time::timeout(CLOSE_BOUND, socket.send(close)).await;
            return;
        }
        let _open = shared.open.enter();
        let conn = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
        shared.metrics.connections.inc();
        let (outbox, mut queue) = Outbox::new();
        // This task keeps a handle too, so that the queue ends (`None`) only
        // when it was closed for overflow, never because a gathering let go.
        let join = HallMail::Route(
            id.clone(),
            Inbound::Join {
                conn,
                encoding,
                member: ends.member(),
                session: ends.take_join(),
            },
            Some(outbox.clone()),
        );
        if shared.hall.send(join).await.is_ok() {
            pump(&mut socket, &mut queue, conn, &mut ends, &id, &shared).await;
            let clean = ends.clean();
            let _ = shared
                .hall
                .send(HallMail::Route(id, Inbound::Leave { conn, clean }, None))
                .await;
        } else {
            Box::pin(closing(
                &mut socket,
                CLOSE_GOING_AWAY,
                "server shutting down",
            ))
            .await;
        }
        drop(outbox);
        shared.metrics.connections.dec();
    }
}

/// Moves frames both ways until either side closes.
///
/// Reading and writing take turns (the select is fair): a write waits at
/// most `SEND_BOUND` for a client that does not read, and a read waits for
/// room in the hall's mailbox, which only backpressure fills. Reading also
/// pauses while [`READ_AHEAD`](super::outbox::READ_AHEAD) frames are on
/// their way to the gathering or waiting to be written: each may bring a
/// reply, and a client that sends faster than it reads must not make its
/// queue overflow.
async fn pump(
    socket: &mut Socket,
    queue: &mut Queue,
    conn: ConnId,
    ends: &mut Ends,
    id: &GatheringId,
    shared: &Front,
) {
    let gate = queue.gate();
    // Bytes of pongs the WebSocket layer holds unwritten, counted in the
    // queue's bytes until a flush completes.
    let mut pongs = 0;
    loop {
        // The branches' futures are dropped before a handler runs, so the
        // handlers may use the socket.
        tokio::select! {
            out = queue.recv() => {
                let (code, reason) = match out {
                    Some(Outgoing::Frame(frame)) => {
                        // Boxed: one allocation per burst written, against
                        // its whole state in every idle connection's task.
                        let written = tokio::time::timeout(SEND_BOUND, write(socket, queue, frame));
                        let written = Box::pin(written).await;
                        if let Ok(Ok(_)) = written {
                            // Flushed: every pong held went out too.
                            queue.pongs_written(std::mem::take(&mut pongs));
                        }
                        match written {
                            Ok(Ok(None)) => continue,
                            Ok(Ok(Some(close))) => close,
                            _ => return,
                        }
                    }
                    Some(Outgoing::Close(code, reason)) => (code, reason),
                    // Closed without a close frame: the client stopped
                    // reading and its queue overflowed.
                    None => (CLOSE_POLICY, "send queue overflow"),
                };
                return Box::pin(closing(socket, code, reason)).await;
            }
            () = gate.taken_by_gathering(), if !gate.may_read() => continue,
            due = std::future::poll_fn(|cx| ends.due(cx)) => match due {
                Due::Expired => {
                    return Box::pin(closing(socket, CLOSE_TOKEN_EXPIRED, "token expired")).await;
                }
                Due::Ping => {
                    let ping = tokio::time::timeout(SEND_BOUND, socket.send(Message::Ping(Vec::new().into())));
                    if !matches!(Box::pin(ping).await, Ok(Ok(()))) {
                        return;
                    }
                }
                Due::Silent => {
                    // Told, without waiting for an answer that will not come.
                    let close = close(CLOSE_GOING_AWAY, "nothing received for two ping intervals");
                    let _ = Box::pin(tokio::time::timeout(CLOSE_BOUND, socket.send(close))).await;
                    return;
                }
            },
            next = socket.next(), if gate.may_read() => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(%conn, error = %e, "connection read failed");
                        // None: the socket itself failed, nobody to tell.
                        if let Some((code, reason)) = violation(&e) {
                            Box::pin(closing(socket, code, reason)).await;
                        }
                        return;
                    }
                    None => return,
                };
                ends.heard();
                socket.get_mut().message_done();
                let frame = match msg {
                    Message::Text(text) => Frame::Text(text.as_str().into()),
                    Message::Binary(bytes) => Frame::Binary(bytes.as_ref().into()),
                    Message::Close(frame) => {
                        ends.closed(frame.is_some_and(|f| f.code == CloseCode::Normal));
                        // The WebSocket layer queued the answer; send it.
                        let _ = tokio::time::timeout(CLOSE_BOUND, socket.flush()).await;
                        return;
                    }
                    // The WebSocket layer answers a ping with a pong; it is
                    // counted against the queue until it is written.
                    Message::Ping(data) => {
                        let len = data.len() + PONG_HEADER;
                        pongs += len;
                        if !queue.pongs_held(len) {
                            return Box::pin(closing(socket, CLOSE_POLICY, "send queue overflow"))
                                .await;
                        }
                        // One try, without waiting: a client that reads
                        // takes its pong now; one that does not keeps it
                        // counted.
                        match socket.flush().now_or_never() {
                            Some(Ok(())) => queue.pongs_written(std::mem::take(&mut pongs)),
                            Some(Err(_)) => return,
                            None => {}
                        }
                        continue;
                    }
                    Message::Pong(_) | Message::Frame(_) => continue,
                };
                gate.routed();
                let inbound = Inbound::Frame {
                    conn,
                    frame,
                    member: ends.member(),
                    session: ends.session(),
                };
                let route = HallMail::Route(id.clone(), inbound, None);
                if shared.hall.send(route).await.is_err() {
                    // The hall is gone: a shutdown has completed, and the
                    // gathering's goodbye, if it had one for this
                    // connection, is already queued.
                    return Box::pin(farewell(socket, queue)).await;
                }
            }
        }
    }
}

/// Who a connection is, and when its right to stay ends: nothing for an
/// open server's connections, one pointer in every connection's task.
struct Ends(Option<Box<Admitted>>);

/// An authenticated connection's member, and its token's expiry; its
/// session (the join's, until sent), whether its client still answers,
/// and whether it closed cleanly; or why it was refused.
struct Admitted {
    member: Option<SharedMember>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    join: Option<Box<SessionJoin>>,
    session: Option<SessionId>,
    live: Option<Liveness>,
    clean: bool,
    refused: Option<Refusal>,
    moved: Option<String>,
}

/// A session connection's liveness: when anything last arrived from it,
/// and one timer, moved on only when it fires (a frame costs a clock
/// read, not a timer reset).
struct Liveness {
    interval: Duration,
    heard: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// What a connection is due, whatever it sends.
enum Due {
    /// Its token expired.
    Expired,
    /// Silent for a ping interval: ping it.
    Ping,
    /// Silent for two: it is gone.
    Silent,
}

impl Ends {
    /// Nothing allocated for an open server's connection without a session.
    fn of(joining: Joining, ping: Duration) -> Self {
        let Joining {
            admission,
            session,
            refused,
            moved,
        } = joining;
        if admission.is_none() && session.is_none() && refused.is_none() && moved.is_none() {
            return Ends(None);
        }
        // Only a session's connection is pinged: one without sees today's
        // protocol, exactly.
        let live = session.as_ref().map(|_| {
            let heard = tokio::time::Instant::now();
            Liveness {
                interval: ping,
                heard,
                timer: Box::pin(tokio::time::sleep_until(heard + ping)),
            }
        });
        let (member, expiry) = match admission {
            Some(Admission { member, expires }) => {
                let expiry = expires.map(|at| {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    Box::pin(tokio::time::sleep(left))
                });
                (Some(Arc::new(member)), expiry)
            }
            None => (None, None),
        };
        Ends(Some(Box::new(Admitted {
            member,
            expiry,
            session: session.as_ref().map(|s| s.session.clone()),
            join: session,
            live,
            clean: false,
            refused,
            moved,
        })))
    }

    /// The close frame of a refused join (4401 or 4403 and why), or of one
    /// sent to another node (4001 and where).
    fn refusal(&mut self) -> Option<Message> {
        let admitted = self.0.as_mut()?;
        if let Some(moved) = admitted.moved.take() {
            return Some(Message::Close(Some(CloseFrame {
                code: CloseCode::from(CLOSE_MOVED),
                reason: close_reason(&moved).into(),
            })));
        }
        let refusal = admitted.refused.take()?;
        let (code, reason) = match &refusal {
            Refusal::Unauthorized(why) => (CLOSE_UNAUTHORIZED, why),
            Refusal::Forbidden(why) => (CLOSE_FORBIDDEN, why),
        };
        Some(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: close_reason(reason).into(),
        })))
    }

    /// The session the join carries, once.
    fn take_join(&mut self) -> Option<Box<SessionJoin>> {
        self.0.as_mut()?.join.take()
    }

    /// The client closed, with 1000 if `clean`.
    fn closed(&mut self, clean: bool) {
        if let Some(a) = self.0.as_mut() {
            a.clean = clean;
        }
    }

    /// Whether the client closed with 1000 (known of a session's
    /// connection, the only one it matters to).
    fn clean(&self) -> bool {
        self.0.as_ref().is_some_and(|a| a.clean)
    }

    /// Something arrived from the client.
    fn heard(&mut self) {
        if let Some(live) = self.0.as_mut().and_then(|a| a.live.as_mut()) {
            live.heard = tokio::time::Instant::now();
        }
    }

    /// Ready once the token has expired, or the client has been silent for
    /// a ping interval (once per silence) or for two.
    fn due(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Due> {
        if self.expired(cx).is_ready() {
            return std::task::Poll::Ready(Due::Expired);
        }
        self.liveness(cx)
    }

    /// Ready when the client has been silent for a ping interval (once per
    /// silence) or for two; never for a connection without a session.
    fn liveness(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Due> {
        let Some(live) = self.0.as_mut().and_then(|a| a.live.as_mut()) else {
            return std::task::Poll::Pending;
        };
        loop {
            if live.timer.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            let silent = live.heard.elapsed();
            if silent >= live.interval * 2 {
                return std::task::Poll::Ready(Due::Silent);
            }
            if silent >= live.interval {
                live.timer.as_mut().reset(live.heard + live.interval * 2);
                // Registers the wake-up for the new deadline.
                let _ = live.timer.as_mut().poll(cx);
                return std::task::Poll::Ready(Due::Ping);
            }
            live.timer.as_mut().reset(live.heard + live.interval);
        }
    }

    /// The member its frames carry (`None`: the gathering names it).
    fn member(&self) -> Option<SharedMember> {
        self.0.as_ref().and_then(|a| a.member.clone())
    }

    /// The session its frames carry.
    fn session(&self) -> Option<SessionId> {
        self.0.as_ref().and_then(|a| a.session.clone())
    }

    /// Ready once the connection's token has expired; never without one.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.0.as_mut().and_then(|a| a.expiry.as_mut()) {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

/// The close a read error calls for, RFC 6455 section 7.4.1: the client
/// broke the protocol (1002), sent text that is not UTF-8 (1007), or a
/// frame larger than allowed (1009). `None` when the connection itself
/// failed and no close frame can reach the client.
fn violation(e: &WsError) -> Option<(u16, &'static str)> {
    match e {
        WsError::Capacity(_) => Some((CLOSE_TOO_BIG, "frame too large")),
        WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Some((CLOSE_POLICY, "frame took too long to arrive"))
        }
        WsError::Utf8(_) => Some((CLOSE_INVALID_DATA, "text frame is not valid UTF-8")),
        WsError::Protocol(p) => Some((CLOSE_PROTOCOL, protocol_reason(p))),
        _ => None,
    }
}

/// A short reason for a protocol error, for the close frame (at most 123
/// bytes; these are fixed strings, nothing of the client's).
fn protocol_reason(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::UnmaskedFrameFromClient => "client frames must be masked",
        ProtocolError::NonZeroReservedBits => "reserved bits set with no extension agreed",
        ProtocolError::FragmentedControlFrame => "control frames must not be fragmented",
        ProtocolError::ControlFrameTooBig => "control frame payload over 125 bytes",
        ProtocolError::UnexpectedContinueFrame => "continuation frame with nothing to continue",
        ProtocolError::ExpectedFragment(_) => "new data frame inside a fragmented message",
        ProtocolError::UnknownControlFrameType(_) | ProtocolError::UnknownDataFrameType(_) => {
            "reserved opcode"
        }
        ProtocolError::InvalidCloseSequence => "invalid close frame payload",
        _ => "WebSocket protocol violation",
    }
}

/// Frames written with one flush at most: a burst (a gathering's batch
/// forwards and acks together) costs one write to the socket rather than
/// one per frame, and a long queue still yields to reading.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to
/// [`WRITE_BATCH`]), then flushes once. Returns the close asked for if the
/// queue ended in one.
async fn write(
    socket: &mut Socket,
    queue: &mut Queue,
    first: Frame,
) -> Result<Option<(u16, &'static str)>, tokio_tungstenite::tungstenite::Error> {
    let mut next = Some(first);
    let mut close = None;
    let mut written = 0;
    while let Some(frame) = next.take() {
        // Ready first, then the message: no message is held across an await
        // (this future is part of every connection's task).
        std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).await?;
        socket.start_send_unpin(match frame {
            Frame::Text(text) => Message::text(&*text),
            Frame::Binary(bytes) => Message::binary(bytes::Bytes::from_owner(bytes)),
        })?;
        written += 1;
        if written < WRITE_BATCH {
            match queue.try_recv() {
                Some(Outgoing::Frame(frame)) => next = Some(frame),
                Some(Outgoing::Close(code, reason)) => close = Some((code, reason)),
                // Empty for now (or closed: the next `recv` says so).
                None => {}
            }
        }
    }
    socket.flush().await?;
    Ok(close)
}

/// Writes what is queued, then the close it ends with (or "going away":
/// the server has stopped).
async fn farewell(socket: &mut Socket, queue: &mut Queue) {
    let (code, reason) = match queue.try_recv() {
        Some(Outgoing::Frame(frame)) => {
            match tokio::time::timeout(CLOSE_BOUND, write(socket, queue, frame)).await {
                Ok(Ok(Some(close))) => close,
                Ok(Ok(None)) => (CLOSE_GOING_AWAY, "server shutting down"),
                _ => return,
            }
        }
        Some(Outgoing::Close(code, reason)) => (code, reason),
        None => (CLOSE_GOING_AWAY, "server shutting down"),
    };
    closing(socket, code, reason).await;
}

/// Sends a close frame, then allows the client a moment to answer the close
/// handshake before the connection is dropped. Callers box it: it happens
/// once per connection, and unboxed its state would enlarge every idle
/// connection's task.
async fn closing(socket: &mut Socket, code: u16, reason: &'static str) {
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_BOUND, socket.send(close(code, reason))).await {
        let _ = tokio::time::timeout(CLOSE_BOUND, async {
            while let Some(Ok(msg)) = socket.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// `reason` cut to what a close frame carries (123 bytes), on a character
/// boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
