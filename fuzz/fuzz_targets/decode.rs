//! Frames as a client (or a server) might send them: decoding never
//! panics, and what decodes encodes back to something that decodes the same.
#![no_main]

use gathering_core::chat::{Chat, ChatOp};
use gathering_core::protocol::{self, Frame};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{ClientMsg, Encoding, ServerMsg};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(frame: &Frame, encoding: Encoding)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(msg) = protocol::decode::<T>(frame) {
        let again = protocol::encode(&msg, encoding).expect("what decoded encodes");
        let back = protocol::decode::<T>(&again).expect("what was encoded decodes");
        assert_eq!(back, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    let binary = Frame::Binary(data.into());
    round_trip::<ClientMsg<TournamentOp>>(&binary, Encoding::Postcard);
    round_trip::<ClientMsg<ChatOp>>(&binary, Encoding::Postcard);
    round_trip::<ServerMsg<TournamentOp, Tournament>>(&binary, Encoding::Postcard);
    round_trip::<ServerMsg<ChatOp, Chat>>(&binary, Encoding::Postcard);
    if let Ok(text) = std::str::from_utf8(data) {
        let text = Frame::Text(text.into());
        round_trip::<ClientMsg<TournamentOp>>(&text, Encoding::Json);
        round_trip::<ClientMsg<ChatOp>>(&text, Encoding::Json);
        round_trip::<ServerMsg<TournamentOp, Tournament>>(&text, Encoding::Json);
        round_trip::<ServerMsg<ChatOp, Chat>>(&text, Encoding::Json);
    }
    // An error quotes little of what it was sent.
    for frame in [&binary] {
        if let Err(e) = protocol::decode::<ClientMsg<TournamentOp>>(frame) {
            assert!(protocol::bounded(e.to_string()).len() <= protocol::MAX_MESSAGE_BYTES);
        }
    }
});
