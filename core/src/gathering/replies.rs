//! The replies a gathering queues: errors, closes at a limit, and any
//! message encoded in its recipient's encoding.

use std::collections::VecDeque;

use serde::Serialize;

use crate::ConnId;
use crate::events::{Action, Delivery};
use crate::protocol::{self, Encoding, Frame, ServerMsg};

/// Queues the close of `conn` at a limit, counted as refusal `counted`
/// (see [`Action::Refused`]), like [`refuse`] counts an error.
#[inline]
pub(super) fn close_at_limit(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    counted: &'static str,
    code: u16,
    reason: &'static str,
) {
    actions.push_back(Action::Refused {
        conn,
        code: counted,
    });
    actions.push_back(Action::Close { conn, code, reason });
}

/// Queues an `error` reply: request `id` (none: the frame did not decode)
/// failed and changed nothing. Every error passes here, so every message
/// a client is sent is [`protocol::bounded`].
#[inline]
pub(super) fn refuse(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    encoding: Encoding,
    id: Option<u64>,
    code: &'static str,
    message: String,
) {
    let msg = ServerMsg::<(), ()>::Error {
        id,
        code: code.into(),
        message: protocol::bounded(message),
    };
    // Counted first, so that a client reading its error finds it counted.
    actions.push_back(Action::Refused { conn, code });
    reply(actions, conn, encoding, &msg);
}

/// Queues a reply, sent once.
#[inline]
pub(super) fn reply<O: Serialize, S: Serialize>(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    encoding: Encoding,
    msg: &ServerMsg<O, S>,
) {
    send_once(actions, conn, encode_or_internal_error(msg, encoding));
}

/// Queues `frame`, already encoded, sent once.
#[inline]
pub(super) fn send_once(actions: &mut VecDeque<Action>, conn: ConnId, frame: Frame) {
    actions.push_back(Action::Send {
        conn,
        frame,
        delivery: Delivery::Once,
    });
}

/// Encodes `msg`; if the application's state cannot be encoded, the client
/// gets an error message that says so instead of nothing.
#[inline]
pub(super) fn encode_or_internal_error<T: Serialize>(msg: &T, encoding: Encoding) -> Frame {
    protocol::encode(msg, encoding).unwrap_or_else(|e| internal_error(&e, encoding))
}

/// The error a client gets when what it asked for cannot be encoded.
pub(super) fn internal_error(e: &protocol::EncodeError, encoding: Encoding) -> Frame {
    let fallback = ServerMsg::<(), ()>::Error {
        id: None,
        code: "internal".into(),
        message: e.to_string(),
    };
    protocol::encode(&fallback, encoding).unwrap_or(Frame::Text("".into()))
}
