//! The examples in docs/PROTOCOL.md are true.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::protocol::{self, Encoding, Frame};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{ClientMsg, DisperseReason, ServerMsg};

type Client = ClientMsg<TournamentOp>;
type Server = ServerMsg<TournamentOp, Tournament>;

fn bytes(msg: &Client) -> Vec<u8> {
    match protocol::encode(msg, Encoding::Postcard).unwrap() {
        Frame::Binary(b) => b.to_vec(),
        Frame::Text(_) => panic!("postcard is binary"),
    }
}

fn json<T: serde::Serialize>(msg: &T) -> String {
    match protocol::encode(msg, Encoding::Json).unwrap() {
        Frame::Text(t) => t.to_string(),
        Frame::Binary(_) => panic!("json is text"),
    }
}

#[test]
fn postcard_examples() {
    assert_eq!(bytes(&ClientMsg::Fetch { id: 8 }), [0x01, 0x08]);
    let op = ClientMsg::Op {
        id: 7,
        op: TournamentOp::RegisterPlayer { name: "Ada".into() },
    };
    assert_eq!(bytes(&op), [0x00, 0x07, 0x00, 0x03, 0x41, 0x64, 0x61]);
}

#[test]
fn json_examples() {
    let op = ClientMsg::<_>::Op {
        id: 7,
        op: TournamentOp::RegisterPlayer { name: "Ada".into() },
    };
    assert_eq!(
        json(&op),
        r#"{"type":"op","id":7,"op":{"type":"register_player","name":"Ada"}}"#
    );
    assert_eq!(json(&Client::Ack { seq: 3 }), r#"{"type":"ack","seq":3}"#);
    assert_eq!(
        json(&Server::Ack { id: 7, seq: 1 }),
        r#"{"type":"ack","id":7,"seq":1}"#
    );
    let draw = TournamentOp::RecordResult {
        a: "Ada".into(),
        b: "Bob".into(),
        winner: None,
    };
    assert_eq!(
        json(&draw),
        r#"{"type":"record_result","a":"Ada","b":"Bob","winner":null}"#
    );
    let bye = Server::Dispersed {
        reason: DisperseReason::Shutdown,
    };
    assert_eq!(json(&bye), r#"{"type":"dispersed","reason":"shutdown"}"#);
    let parsed: Client = protocol::decode(&Frame::Text(
        r#"{"type":"op","id":9,"op":{"type":"record_result","a":"Ada","b":"Bob","winner":"Bob"},"extra":1}"#.into(),
    ))
    .unwrap();
    assert!(matches!(
        parsed,
        ClientMsg::Op {
            id: 9,
            op: TournamentOp::RecordResult { .. }
        }
    ));
}
