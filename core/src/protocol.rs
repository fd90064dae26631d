//! The wire protocol shared by every host and client.
//!
//! Binary frames carry [postcard], text frames carry the same messages as
//! JSON; `docs/PROTOCOL.md` describes both with examples. Decoding is total:
//! bad bytes become a [`DecodeError`], never a panic.

use core::fmt;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::wire_enum;

/// Close code sent after a `dispersed` message for an idle or empty gathering.
pub const CLOSE_DISPERSED: u16 = 4000;
/// Close code of a connection its client closed (WebSocket "normal").
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code sent when the server shuts down (WebSocket "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that broke the WebSocket protocol (RFC 6455).
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code for a text frame that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a connection that left too many forwards unacknowledged.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a frame larger than the host accepts.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a failure inside the server (e.g. storage unreadable).
pub const CLOSE_INTERNAL: u16 = 1011;

/// Close code for a connection whose gathering is now kept by another
/// node of a cluster: join again at once, at the node the close reason
/// names (`node N at URL`) or through the cluster's front.
pub const CLOSE_MOVED: u16 = 4001;

/// Close code for a connection whose session joined again on another
/// connection: the newer one carries on; do not reconnect this one.
pub const CLOSE_SESSION_MOVED: u16 = 4002;
/// Close code for a connection whose token expired: reconnect with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;
/// Close code for a join refused for its credentials (HTTP 401's meaning),
/// for clients that cannot read an HTTP answer to an upgrade: browsers.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code for a join refused to who it is (HTTP 403's meaning): a
/// token for another gathering, or a session of another member.
pub const CLOSE_FORBIDDEN: u16 = 4403;

/// Close code for a connection whose host went away to come back (RFC 6455
/// "service restart": an in-page owner tab that closed): join again.
pub const CLOSE_RESTART: u16 = 1012;
/// Close code for a join to a gathering at its connection bound.
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// Largest frame a host accepts from a client, by default (1 MiB): both
/// hosts' default, and the server's `--max-frame-bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Error code of an op over the connection's rate; not applied.
pub const RATE_LIMITED: &str = "rate_limited";

/// Error code of an op (or a join) the member may not do.
pub const FORBIDDEN: &str = "forbidden";

/// Error code of a presence larger than the server's bound.
pub const PRESENCE_TOO_LARGE: &str = "presence_too_large";

/// Error code of a presence from a connection without a session.
pub const NO_SESSION: &str = "no_session";

/// Error code of a join with a session that belongs to another member.
pub const SESSION_TAKEN: &str = "session_taken";

/// Error code of an op whose id is below its session's highest applied one
/// and too old to be remembered: whether it applied is no longer known, so
/// it is not applied again.
pub const STALE_OP: &str = "stale_op";

/// Which of the two encodings a frame uses. A server answers each client in
/// the encoding of the last frame that client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// JSON in text frames.
    #[default]
    Json,
    /// Postcard in binary frames.
    Postcard,
}

/// One WebSocket data frame. Cheap to clone: a forward sent to many
/// connections, and kept for retries, shares one buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (JSON).
    Text(Arc<str>),
    /// A binary frame (postcard).
    Binary(Arc<[u8]>),
}

impl Frame {
    /// The encoding this frame's kind implies.
    pub fn encoding(&self) -> Encoding {
        match self {
            Frame::Text(_) => Encoding::Json,
            Frame::Binary(_) => Encoding::Postcard,
        }
    }

    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a gathering dispersed; sent to clients in the `dispersed` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisperseReason {
    /// No message was processed for the idle timeout.
    Idle,
    /// The last connection left and none came back within the grace period.
    Empty,
    /// The server is shutting down.
    Shutdown,
    /// A commit failed: the gathering restarts from its durable state.
    StorageFailed,
    /// The host holds its most live gatherings, and this one was the least
    /// recently active when another was wanted; its state is saved.
    Evicted,
    /// Another node of a cluster keeps the gathering now: this one drained
    /// (its state is saved and handed over) or was fenced (another node
    /// claimed it; nothing unacknowledged was kept here). Join again.
    Moved,
}

impl DisperseReason {
    /// The reason as it appears on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DisperseReason::Idle => "idle",
            DisperseReason::Empty => "empty",
            DisperseReason::Shutdown => "shutdown",
            DisperseReason::StorageFailed => "storage_failed",
            DisperseReason::Evicted => "evicted",
            DisperseReason::Moved => "moved",
        }
    }

    /// The WebSocket close code that follows the `dispersed` message.
    pub fn close_code(self) -> u16 {
        match self {
            DisperseReason::Idle | DisperseReason::Empty | DisperseReason::Evicted => {
                CLOSE_DISPERSED
            }
            DisperseReason::Shutdown => CLOSE_GOING_AWAY,
            DisperseReason::StorageFailed => CLOSE_INTERNAL,
            DisperseReason::Moved => CLOSE_MOVED,
        }
    }

    /// The close frame's reason text: short (a close reason is limited to 123
    /// bytes) and naming the cause.
    pub fn close_text(self) -> &'static str {
        match self {
            DisperseReason::Idle => "gathering dispersed: idle",
            DisperseReason::Empty => "gathering dispersed: empty",
            DisperseReason::Shutdown => "gathering dispersed: server shutting down",
            DisperseReason::StorageFailed => "gathering restarting: storage failed",
            DisperseReason::Evicted => "gathering dispersed: evicted to make room",
            DisperseReason::Moved => "gathering moved to another node: join again",
        }
    }
}

impl fmt::Display for DisperseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

wire_enum! {
    /// A message from a client to its gathering. `O` is the application's op.
    #[derive(Clone, Debug, PartialEq)]
    pub enum ClientMsg<O, P = ()> {
        /// Apply `op`; the answer is an `ack` or an `error` carrying `id`.
        Op { id: u64, op: O },
        /// Ask for the whole state; the answer is a `state` carrying `id`.
        Fetch { id: u64 },
        /// Acknowledge every forward up to and including `seq`.
        Ack { seq: u64 },
        /// This member's presence is now `data` (a session's connection
        /// only): never persisted, never answered but by the diffs.
        Presence { data: P },
    }
}

wire_enum! {
    /// A message from a gathering to a client. `O` is the application's op,
    /// `S` its state, `P` its presence.
    #[derive(Clone, Debug, PartialEq)]
    pub enum ServerMsg<O, S, P = ()> {
        /// The op sent with `id` was applied, durably, as number `seq`.
        Ack { id: u64, seq: u64 },
        /// The request `id` failed (`id` is absent when the frame could not
        /// be decoded); nothing changed.
        Error { id: Option<u64>, code: String, message: String },
        /// Another client's op, number `seq`; acknowledge it with `ack`.
        Forward { seq: u64, op: O },
        /// The whole state, as of op number `seq`.
        State { id: u64, seq: u64, state: S },
        /// The gathering dispersed; the connection closes next.
        Dispersed { reason: DisperseReason },
        /// First message to a connection that joined with a session: who
        /// it acts as, the gathering's `epoch` (its history's identity),
        /// its latest durable op number, and the highest op id applied from
        /// this session (`None` if the gathering does not know the session).
        Welcome { member: String, epoch: u64, seq: u64, last_op: Option<u64> },
        /// The whole state as of op `seq`, for a resume that could not be
        /// served op by op; forwards continue from `seq + 1`.
        Resync { seq: u64, state: S },
        /// Everyone present (a session's connection open), after the
        /// welcome and what was missed: each member's presence, `None` if
        /// it set none.
        Presence { members: BTreeMap<String, Option<P>> },
        /// What changed since: members who came or set their presence,
        /// and members who left.
        PresenceDiff { joins: BTreeMap<String, Option<P>>, leaves: Vec<String> },
    }
}

/// A frame that could not be decoded, with a message a client author can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Which encoding was attempted.
    pub encoding: Encoding,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encoding {
            Encoding::Json => write!(f, "invalid JSON message: {}", self.message),
            Encoding::Postcard => write!(f, "invalid postcard message: {}", self.message),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A message that could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not encode message: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

/// Decodes a message from a frame, in the frame's encoding.
pub fn decode<T: DeserializeOwned>(frame: &Frame) -> Result<T, DecodeError> {
    match frame {
        Frame::Text(text) => serde_json::from_str(text).map_err(|e| DecodeError {
            encoding: Encoding::Json,
            message: e.to_string(),
        }),
        Frame::Binary(bytes) => {
            let err = |message: String| DecodeError {
                encoding: Encoding::Postcard,
                message,
            };
            match postcard::take_from_bytes(bytes) {
                Ok((msg, [])) => Ok(msg),
                Ok((_, rest)) => Err(err(format!("{} trailing bytes", rest.len()))),
                Err(e) => Err(err(e.to_string())),
            }
        }
    }
}

/// Longest error message sent to a client, in bytes: a message that quotes
/// what the client sent must not echo a frame's worth of it back.
pub const MAX_MESSAGE_BYTES: usize = 256;
/// Characters of client input an error message quotes at most.
pub const QUOTE_CHARS: usize = 40;

/// `message` as a client may be sent it: control characters escaped (it
/// may quote client input, e.g. a decoder's error does), and cut to
/// [`MAX_MESSAGE_BYTES`] with an ellipsis if longer.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES && !message.chars().any(char::is_control) {
        return message;
    }
    let room = MAX_MESSAGE_BYTES - '…'.len_utf8();
    let mut out = String::with_capacity(MAX_MESSAGE_BYTES);
    for c in message.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        if out.len() > room {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// Client input as an error message quotes it: in double quotes, escaped
/// as Rust escapes a string (control characters and quotes visible), at
/// most [`QUOTE_CHARS`] characters of it, with an ellipsis when cut.
pub fn quote(input: &str) -> String {
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(QUOTE_CHARS).collect();
    let cut = if chars.next().is_some() { "…" } else { "" };
    format!("{head:?}{cut}")
}

/// Encodes a message as a frame in `encoding`.
pub fn encode<T: Serialize>(msg: &T, encoding: Encoding) -> Result<Frame, EncodeError> {
    match encoding {
        Encoding::Json => serde_json::to_string(msg)
            .map(|s| Frame::Text(s.into()))
            .map_err(|e| EncodeError(e.to_string())),
        Encoding::Postcard => postcard::to_allocvec(msg)
            .map(|b| Frame::Binary(b.into()))
            .map_err(|e| EncodeError(e.to_string())),
    }
}

/// The `state` reply to fetch `id` at op `seq`, built around `state`, the
/// state alone already encoded in the frame's encoding: one encoding of a
/// large state then serves every fetch of the same seq. The same bytes as
/// [`encode`] of [`ServerMsg::State`], whose last field is the state.
pub fn state_frame(id: u64, seq: u64, state: &Frame) -> Result<Frame, EncodeError> {
    match state {
        Frame::Text(state) => {
            let head = json_head(id, seq)?;
            Ok(Frame::Text([&head, &**state, "}"].concat().into()))
        }
        Frame::Binary(state) => {
            let mut frame = postcard_head(id, seq)?;
            frame.extend_from_slice(state);
            Ok(Frame::Binary(frame.into()))
        }
    }
}

/// The state alone in `frame`, the `state` reply to fetch `id` at op
/// `seq`: what [`state_frame`] builds that reply around.
pub fn state_of(frame: &Frame, id: u64, seq: u64) -> Option<Frame> {
    match frame {
        Frame::Text(text) => {
            let head = json_head(id, seq).ok()?;
            let state = text.strip_prefix(head.as_str())?.strip_suffix('}')?;
            Some(Frame::Text(state.into()))
        }
        Frame::Binary(bytes) => {
            let head = postcard_head(id, seq).ok()?;
            Some(Frame::Binary(bytes.strip_prefix(head.as_slice())?.into()))
        }
    }
}

/// A JSON `state` reply up to its state (the last field).
fn json_head(id: u64, seq: u64) -> Result<String, EncodeError> {
    let head = ServerMsg::<(), ()>::State { id, seq, state: () };
    let mut head = serde_json::to_string(&head).map_err(|e| EncodeError(e.to_string()))?;
    if !head.ends_with("null}") {
        return Err(EncodeError("a state reply must end with its state".into()));
    }
    head.truncate(head.len() - "null}".len());
    Ok(head)
}

/// A postcard `state` reply up to its state (the last field; `()` encodes
/// as nothing).
fn postcard_head(id: u64, seq: u64) -> Result<Vec<u8>, EncodeError> {
    let head = ServerMsg::<(), ()>::State { id, seq, state: () };
    postcard::to_allocvec(&head).map_err(|e| EncodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_frame_around_an_encoded_state_is_the_state_reply() {
        let state = vec![7u32, 300, 70_000];
        for encoding in [Encoding::Json, Encoding::Postcard] {
            let whole = encode(
                &Server::State {
                    id: 129,
                    seq: 1 << 40,
                    state: state.clone(),
                },
                encoding,
            )
            .unwrap();
            let body = encode(&state, encoding).unwrap();
            assert_eq!(state_frame(129, 1 << 40, &body).unwrap(), whole);
            assert_eq!(state_of(&whole, 129, 1 << 40), Some(body));
            assert_eq!(
                state_of(&whole, 128, 1 << 40),
                None,
                "another fetch's reply"
            );
        }
    }

    wire_enum! {
        #[derive(Clone, Debug, PartialEq)]
        enum Op {
            Rename { name: String },
            Score { a: u32, b: Option<u32> },
        }
    }

    type Server = ServerMsg<Op, Vec<u32>>;

    fn text(s: &str) -> Frame {
        Frame::Text(s.into())
    }

    #[test]
    fn json_is_internally_tagged_at_every_level() {
        let msg: ClientMsg<Op> = ClientMsg::Op {
            id: 7,
            op: Op::Rename { name: "Ada".into() },
        };
        let Frame::Text(json) = encode(&msg, Encoding::Json).unwrap() else {
            panic!("json must be text");
        };
        assert_eq!(
            &*json,
            r#"{"type":"op","id":7,"op":{"type":"rename","name":"Ada"}}"#
        );
        assert_eq!(decode::<ClientMsg<Op>>(&text(&json)).unwrap(), msg);
    }

    #[test]
    fn postcard_round_trips_every_variant() {
        let msgs: Vec<Server> = vec![
            ServerMsg::Ack { id: 1, seq: 2 },
            ServerMsg::Error {
                id: None,
                code: "x".into(),
                message: "y".into(),
            },
            ServerMsg::Forward {
                seq: 3,
                op: Op::Score { a: 1, b: None },
            },
            ServerMsg::State {
                id: 4,
                seq: 5,
                state: vec![1, 2],
            },
            ServerMsg::Dispersed {
                reason: DisperseReason::Empty,
            },
        ];
        for msg in msgs {
            for enc in [Encoding::Json, Encoding::Postcard] {
                let frame = encode(&msg, enc).unwrap();
                assert_eq!(frame.encoding(), enc);
                assert_eq!(decode::<Server>(&frame).unwrap(), msg);
            }
        }
    }

    #[test]
    fn error_without_id_is_null_in_json() {
        let msg: Server = ServerMsg::Error {
            id: None,
            code: "bad_frame".into(),
            message: "m".into(),
        };
        let Frame::Text(json) = encode(&msg, Encoding::Json).unwrap() else {
            panic!()
        };
        assert_eq!(
            &*json,
            r#"{"type":"error","id":null,"code":"bad_frame","message":"m"}"#
        );
        let msg: Server = ServerMsg::Dispersed {
            reason: DisperseReason::Idle,
        };
        let Frame::Text(json) = encode(&msg, Encoding::Json).unwrap() else {
            panic!()
        };
        assert_eq!(&*json, r#"{"type":"dispersed","reason":"idle"}"#);
    }

    #[test]
    fn bad_input_is_an_error_value() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"op","id":-1}"#,
            r#"{"id":1}"#,
        ] {
            let e = decode::<ClientMsg<Op>>(&text(bad)).unwrap_err();
            assert_eq!(e.encoding, Encoding::Json);
            assert!(e.to_string().starts_with("invalid JSON message"), "{e}");
        }
        for bad in [
            &[][..],
            &[9],
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[1, 1, 0],
        ] {
            let e = decode::<ClientMsg<Op>>(&Frame::Binary(bad.into())).unwrap_err();
            assert_eq!(e.encoding, Encoding::Postcard, "{bad:?}");
        }
    }

    #[test]
    fn missing_optional_fields_are_none() {
        let msg =
            decode::<ClientMsg<Op>>(&text(r#"{"type":"op","id":1,"op":{"type":"score","a":2}}"#));
        assert_eq!(
            msg.unwrap(),
            ClientMsg::Op {
                id: 1,
                op: Op::Score { a: 2, b: None }
            }
        );
    }
}
