//! A Rust client for the gathering protocol (docs/PROTOCOL.md), usable as an
//! SDK: join, send ops, receive and acknowledge forwards, fetch state, and
//! rejoin after a dispersal.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use gathering_core::protocol::{self, Encoding, Frame};
use gathering_core::{App, ClientMsg, DisperseReason, GatheringId, ServerMsg, SessionId};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long an automatic ack waits for an op or fetch to travel with. Acks
/// are cumulative, so the one ack then covers every forward that arrived
/// meanwhile, and the server reads one frame, in one wake-up, where it
/// would read one per forward. Far below the server's retry interval (1 s
/// by default), so nothing is re-sent for it.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Forwards an automatic ack covers at most: far below the unacknowledged
/// forwards a server holds for one connection (1,024 by default).
const ACK_EVERY: u32 = 32;

/// Bytes the WebSocket layer reads from the socket at a time. It zero-fills
/// this much before every read (tungstenite 0.29), so its default of
/// 128 KiB made the zeroing most of a client's CPU under a stream of small
/// frames (BENCHMARKS.md, "Tried and not kept"); a larger message still arrives whole,
/// over several reads.
const READ_CHUNK: usize = 8 * 1024;

mod room;

pub use room::{Room, RoomOptions, RoomSender, TokenSource};

/// A client's WebSocket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection could not be opened.
pub(crate) enum OpenError {
    /// The URL is not one to connect to.
    Url(String),
    /// The token cannot be sent in a header.
    Token,
    /// The connection or the upgrade failed (an HTTP refusal included).
    Failed(tungstenite::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Url(e) => f.write_str(e),
            OpenError::Token => f.write_str("the token is not a valid header value"),
            OpenError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The join URL of gathering `id` on the server at `base`, speaking
/// `encoding`; a session's parameters follow with `&`.
pub(crate) fn join_url(base: &str, id: &GatheringId, encoding: Encoding) -> String {
    let query = match encoding {
        Encoding::Json => "json",
        Encoding::Postcard => "postcard",
    };
    format!(
        "{}/gatherings/{id}?encoding={query}",
        base.trim_end_matches('/')
    )
}

/// Opens a WebSocket to `url`, with `token` as `Authorization: Bearer`.
pub(crate) async fn connect(url: &str, token: Option<&str>) -> Result<Ws, OpenError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| OpenError::Url(e.to_string()))?;
    if let Some(token) = token {
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| OpenError::Token)?;
        request.headers_mut().insert("authorization", bearer);
    }
    let config = WebSocketConfig::default().read_buffer_size(READ_CHUNK);
    // Without Nagle's algorithm (`true`): a small frame written after
    // another is sent at once, not held for the server's delayed ACK.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(OpenError::Failed)?;
    Ok(ws)
}

/// The automatic ack owed and not yet queued.
struct OwedAck {
    /// The highest forward received.
    seq: u64,
    /// Forwards it covers.
    count: u32,
    /// When it goes alone at the latest.
    due: Instant,
}

/// Something the server pushed that was not an answer to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming<O> {
    /// Another client's op, number `seq`.
    Forward {
        /// Its number.
        seq: u64,
        /// The op.
        op: O,
    },
    /// The session ended normally: the gathering dispersed. Rejoin with
    /// [`Client::connect`] to continue; the state is kept.
    Dispersed {
        /// Why it dispersed.
        reason: DisperseReason,
        /// The close code that followed (4000, or 1001 on shutdown).
        code: Option<u16>,
    },
}

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientError {
    /// Could not connect, or the server refused the join (e.g. HTTP 400).
    Connect(String),
    /// The server refused the op or fetch; nothing changed.
    Rejected {
        /// Stable error code.
        code: String,
        /// Explanation.
        message: String,
    },
    /// The gathering dispersed before answering; the op may or may not have
    /// been applied: rejoin and fetch to see.
    Dispersed(DisperseReason),
    /// The connection closed for another reason.
    Closed {
        /// Close code, if the server sent one.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The server sent something this client does not understand.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot join: {e}"),
            ClientError::Rejected { code, message } => write!(f, "refused ({code}): {message}"),
            ClientError::Dispersed(r) => {
                write!(f, "the gathering dispersed ({r}) before answering")
            }
            ClientError::Closed { code, reason } => {
                write!(f, "connection closed ({code:?}): {reason}")
            }
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Anything the server says, as [`Client::reply`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<O> {
    /// Submitted op `id` is durable as op number `seq`.
    Acked {
        /// The request id [`Client::submit`] returned.
        id: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A request was refused; `id` is `None` when the frame was unreadable.
    Rejected {
        /// The request id, if the server could read it.
        id: Option<u64>,
        /// Machine-readable reason.
        code: String,
        /// For people.
        message: String,
    },
    /// Another connection's op.
    Forward {
        /// Its sequence number.
        seq: u64,
        /// The op.
        op: O,
    },
    /// The gathering dispersed; the session is over (rejoin to go on).
    Dispersed {
        /// Why.
        reason: DisperseReason,
        /// The close code that followed, if it arrived.
        code: Option<u16>,
    },
}

/// One connection to one gathering, hosting application `A`.
pub struct Client<A: App> {
    ws: Ws,
    encoding: Encoding,
    next_id: u64,
    auto_ack: bool,
    owed: Option<OwedAck>,
    inbox: VecDeque<Incoming<A::Op>>,
    /// Set once the gathering said it dispersed.
    ended: Option<DisperseReason>,
    _app: PhantomData<A>,
}

impl<A: App> Client<A> {
    /// Joins gathering `id` on the server at `base` (e.g. `ws://127.0.0.1:8080`),
    /// speaking `encoding`. Joining a dispersed gathering spawns it again.
    pub async fn connect(
        base: &str,
        id: &GatheringId,
        encoding: Encoding,
    ) -> Result<Self, ClientError> {
        Self::connect_as(base, id, encoding, None).await
    }

    /// [`Client::connect`] with `token` (a server's `--auth-secret` JWT),
    /// sent as `Authorization: Bearer`; a refusal is
    /// [`ClientError::Connect`] naming the HTTP status (401 or 403).
    pub async fn connect_as(
        base: &str,
        id: &GatheringId,
        encoding: Encoding,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::open(base, id, encoding, token, None).await
    }

    /// [`Client::connect`] with `session`: its ops apply exactly once, and
    /// it is welcomed (the `welcome`, `resync` and presence messages are
    /// read past; this client does not yet resume or retry by itself).
    pub async fn connect_session(
        base: &str,
        id: &GatheringId,
        encoding: Encoding,
        session: &SessionId,
    ) -> Result<Self, ClientError> {
        Self::open(base, id, encoding, None, Some(session)).await
    }

    async fn open(
        base: &str,
        id: &GatheringId,
        encoding: Encoding,
        token: Option<&str>,
        session: Option<&SessionId>,
    ) -> Result<Self, ClientError> {
        let session = session.map_or(String::new(), |s| format!("&session={s}"));
        let url = format!("{}{session}", join_url(base, id, encoding));
        let ws = connect(&url, token)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Client {
            ws,
            encoding,
            next_id: 0,
            auto_ack: true,
            owed: None,
            inbox: VecDeque::new(),
            ended: None,
            _app: PhantomData,
        })
    }

    /// Whether forwards are acknowledged automatically (the default): with
    /// the next op or fetch this client sends, or alone 20 ms after the
    /// first forward it covers, or at once when 32 are owed, whichever
    /// comes first; one cumulative ack covers them all.
    pub fn set_auto_ack(&mut self, on: bool) {
        self.auto_ack = on;
    }

    /// Applies `op`; returns its sequence number once the server has made it durable.
    pub async fn op(&mut self, op: A::Op) -> Result<u64, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&ClientMsg::Op { id, op }).await?;
        loop {
            match self.read().await? {
                ServerMsg::Ack { id: got, seq } if got == id => return Ok(seq),
                ServerMsg::Error {
                    id: Some(got),
                    code,
                    message,
                } if got == id => {
                    return Err(ClientError::Rejected { code, message });
                }
                other => self.stash_or_end(other).await?,
            }
        }
    }

    /// Queues `op` without waiting for its answer; returns the request id
    /// that its [`Reply::Acked`] or [`Reply::Rejected`] will carry. With
    /// [`Client::reply`], keeps many ops in flight on one connection.
    ///
    /// Submitted ops are written together, at the latest when this client
    /// next waits for the server (any read) or on [`Client::flush`]: a
    /// window of ops costs one write to the socket, not one each.
    pub async fn submit(&mut self, op: A::Op) -> Result<u64, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send_later(&ClientMsg::Op { id, op }).await?;
        Ok(id)
    }

    /// Writes whatever [`Client::submit`] and automatic acknowledgements
    /// have queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.ws.flush().await.map_err(|e| closed(&e.to_string()))
    }

    /// The next thing the server says: an answer to a submitted op, a
    /// forward (acknowledged first if auto-ack is on), or the end of the
    /// session. Forwards already stashed by [`Client::op`] come first.
    pub async fn reply(&mut self) -> Result<Reply<A::Op>, ClientError> {
        if let Some(incoming) = self.inbox.pop_front() {
            return Ok(match incoming {
                Incoming::Forward { seq, op } => Reply::Forward { seq, op },
                Incoming::Dispersed { reason, code } => Reply::Dispersed { reason, code },
            });
        }
        loop {
            match self.read().await? {
                ServerMsg::Ack { id, seq } => return Ok(Reply::Acked { id, seq }),
                ServerMsg::Error { id, code, message } => {
                    return Ok(Reply::Rejected { id, code, message });
                }
                ServerMsg::Forward { seq, op } => {
                    self.owe_ack(seq).await?;
                    return Ok(Reply::Forward { seq, op });
                }
                msg @ ServerMsg::Dispersed { .. } => {
                    self.stash(msg).await?;
                    if let Some(Incoming::Dispersed { reason, code }) = self.inbox.pop_back() {
                        return Ok(Reply::Dispersed { reason, code });
                    }
                }
                // Only a session join is sent these; this client joins
                // without one.
                ServerMsg::State { .. }
                | ServerMsg::Welcome { .. }
                | ServerMsg::Resync { .. }
                | ServerMsg::Presence { .. }
                | ServerMsg::PresenceDiff { .. } => {}
            }
        }
    }

    /// Fetches the whole state and the number of the last op it holds; a
    /// refused fetch (over the rate limit, say) is [`ClientError::Rejected`].
    pub async fn fetch(&mut self) -> Result<(u64, A), ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&ClientMsg::Fetch { id }).await?;
        loop {
            match self.read().await? {
                ServerMsg::State {
                    id: got,
                    seq,
                    state,
                } if got == id => return Ok((seq, state)),
                ServerMsg::Error {
                    id: Some(got),
                    code,
                    message,
                } if got == id => return Err(ClientError::Rejected { code, message }),
                other => self.stash_or_end(other).await?,
            }
        }
    }

    /// The next forward, or the end of the session ([`Incoming::Dispersed`]).
    pub async fn next(&mut self) -> Result<Incoming<A::Op>, ClientError> {
        loop {
            if let Some(incoming) = self.inbox.pop_front() {
                return Ok(incoming);
            }
            let msg = self.read().await?;
            self.stash(msg).await?;
        }
    }

    /// Acknowledges every forward up to and including `seq`, now.
    pub async fn ack(&mut self, seq: u64) -> Result<(), ClientError> {
        if self.owed.as_ref().is_some_and(|o| o.seq <= seq) {
            self.owed = None;
        }
        self.send(&ClientMsg::Ack { seq }).await
    }

    /// Sends a raw WebSocket message (for tests of bad input).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.send(msg).await.map_err(|e| closed(&e.to_string()))
    }

    /// Queues a raw WebSocket message, written with the next flush or read
    /// that waits (for tests and benchmarks that write many at once).
    pub async fn feed_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.feed(msg).await.map_err(|e| closed(&e.to_string()))
    }

    /// Reads the next raw server message, answers included. Before it
    /// waits, it writes what was queued (the answer may depend on it).
    pub async fn read(&mut self) -> Result<ServerMsg<A::Op, A, A::Presence>, ClientError> {
        loop {
            let next = match self.ws.next().now_or_never() {
                Some(next) => next,
                None => {
                    if self.owed.as_ref().is_some_and(|o| o.due <= Instant::now()) {
                        self.queue_owed_ack().await?;
                    }
                    self.flush().await?;
                    match self.owed.as_ref().map(|o| o.due) {
                        None => self.ws.next().await,
                        Some(due) => tokio::select! {
                            next = self.ws.next() => next,
                            () = tokio::time::sleep_until(due) => continue,
                        },
                    }
                }
            };
            let Some(next) = next else {
                return Err(closed("connection ended"));
            };
            let msg = next.map_err(|e| closed(&e.to_string()))?;
            let frame = match msg {
                Message::Text(text) => Frame::Text(text.as_str().into()),
                Message::Binary(bytes) => Frame::Binary(bytes.as_ref().into()),
                Message::Close(frame) => {
                    return Err(ClientError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                _ => continue,
            };
            return protocol::decode(&frame).map_err(|e| ClientError::Protocol(e.to_string()));
        }
    }

    /// Closes the connection with 1000: a clean leave (a session's member
    /// leaves the presence at once, not after the grace).
    pub async fn close(mut self) {
        let _ = self.ws.close(Some(room::normal_close())).await;
    }

    /// Like `stash`, for a caller waiting for an answer: the end of the
    /// session is an error there, because the answer will never come.
    async fn stash_or_end(
        &mut self,
        msg: ServerMsg<A::Op, A, A::Presence>,
    ) -> Result<(), ClientError> {
        self.stash(msg).await?;
        match self.ended {
            Some(reason) => Err(ClientError::Dispersed(reason)),
            None => Ok(()),
        }
    }

    async fn stash(&mut self, msg: ServerMsg<A::Op, A, A::Presence>) -> Result<(), ClientError> {
        match msg {
            ServerMsg::Forward { seq, op } => {
                self.owe_ack(seq).await?;
                self.inbox.push_back(Incoming::Forward { seq, op });
                Ok(())
            }
            ServerMsg::Dispersed { reason } => {
                // The close frame follows; read it for its code.
                let code = match self.read().await {
                    Err(ClientError::Closed { code, .. }) => code,
                    _ => None,
                };
                self.ended = Some(reason);
                self.inbox.push_back(Incoming::Dispersed { reason, code });
                Ok(())
            }
            // Answers to requests nobody waits for any more, and errors for
            // undecodable frames, are dropped.
            _ => Ok(()),
        }
    }

    /// Writes `msg` now (with whatever was queued before it).
    async fn send(&mut self, msg: &ClientMsg<A::Op>) -> Result<(), ClientError> {
        self.send_later(msg).await?;
        self.flush().await
    }

    /// Notes that forward `seq` arrived; the ack goes with the next request,
    /// or alone when due.
    async fn owe_ack(&mut self, seq: u64) -> Result<(), ClientError> {
        if !self.auto_ack {
            return Ok(());
        }
        let owed = self.owed.get_or_insert_with(|| OwedAck {
            seq,
            count: 0,
            due: Instant::now() + ACK_DELAY,
        });
        owed.seq = owed.seq.max(seq);
        owed.count += 1;
        if owed.count >= ACK_EVERY {
            self.queue_owed_ack().await?;
        }
        Ok(())
    }

    /// Queues the ack owed, if any.
    async fn queue_owed_ack(&mut self) -> Result<(), ClientError> {
        match self.owed.take() {
            Some(owed) => self.feed(&ClientMsg::Ack { seq: owed.seq }).await,
            None => Ok(()),
        }
    }

    /// Queues `msg`, and before it the ack owed; both are written by the
    /// next flush or read that waits.
    async fn send_later(&mut self, msg: &ClientMsg<A::Op>) -> Result<(), ClientError> {
        self.queue_owed_ack().await?;
        self.feed(msg).await
    }

    /// Queues `msg` alone.
    async fn feed(&mut self, msg: &ClientMsg<A::Op>) -> Result<(), ClientError> {
        if self.ended.is_some() {
            return Err(closed("the gathering dispersed; rejoin to continue"));
        }
        let frame = protocol::encode(msg, self.encoding)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let msg = match frame {
            Frame::Text(text) => Message::text(&*text),
            Frame::Binary(bytes) => Message::binary(bytes.to_vec()),
        };
        self.ws.feed(msg).await.map_err(|e| closed(&e.to_string()))
    }
}

fn closed(reason: &str) -> ClientError {
    ClientError::Closed {
        code: None,
        reason: reason.to_owned(),
    }
}
