//! A second application: a chat room that keeps its last messages.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::protocol::FORBIDDEN;
use crate::wire_enum;
use crate::{App, Member, Rejection};

/// Messages a room keeps; older ones are forgotten.
pub const HISTORY: usize = 100;
/// Longest message accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// The role that may read the room but not `say`; every other role may.
pub const SPECTATOR: &str = "spectator";

wire_enum! {
    /// An operation on a [`Chat`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum ChatOp {
        /// Say `text` (1 to 1,000 characters) to the room.
        Say { text: String },
    }
}

/// One message of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    /// Who said it: the connection that sent it.
    pub from: String,
    /// What was said.
    pub text: String,
}

/// A room: the last [`HISTORY`] messages, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// The history, oldest first.
    pub messages: VecDeque<Said>,
}

/// What a chat member shows the others: whether it is typing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPresence {
    /// Typing a message now.
    pub typing: bool,
}

impl App for Chat {
    const NAME: &'static str = "chat";
    type Op = ChatOp;
    type Presence = ChatPresence;

    fn apply(&mut self, by: &Member, op: &ChatOp) -> Result<(), Rejection> {
        let ChatOp::Say { text } = op;
        if by.role() == Some(SPECTATOR) {
            return Err(Rejection::new(
                FORBIDDEN,
                "a spectator reads the room but may not say anything",
            ));
        }
        // Counted lazily: a 1 MB text is refused after 1,001 characters.
        if text.is_empty() || text.chars().nth(MAX_TEXT_CHARS).is_some() {
            return Err(Rejection::new(
                "invalid_text",
                format!("a message has 1 to {MAX_TEXT_CHARS} characters"),
            ));
        }
        if self.messages.len() >= HISTORY {
            self.messages.pop_front();
        }
        self.messages.push_back(Said {
            from: by.id.clone(),
            text: text.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnId;

    #[test]
    fn a_message_is_from_its_member_and_spectators_say_nothing() {
        let mut chat = Chat::default();
        let hello = ChatOp::Say {
            text: "hello".into(),
        };
        chat.apply(&Member::new("Ada", "guest"), &hello).unwrap();
        let refused = chat.apply(&Member::new("Vic", SPECTATOR), &hello);
        assert_eq!(refused.map_err(|e| e.code), Err(FORBIDDEN));
        chat.apply(&Member::open(ConnId(4)), &hello).unwrap();
        let from: Vec<&str> = chat.messages.iter().map(|m| m.from.as_str()).collect();
        assert_eq!(from, ["Ada", "conn-4"]);
    }

    fn say(chat: &mut Chat, text: &str) -> Result<(), Rejection> {
        chat.apply(&Member::open(ConnId(7)), &ChatOp::Say { text: text.into() })
    }

    #[test]
    fn keeps_the_last_hundred_oldest_first() {
        let mut chat = Chat::default();
        for i in 0..150 {
            say(&mut chat, &format!("m{i}")).unwrap();
        }
        assert_eq!(chat.messages.len(), HISTORY);
        assert_eq!(chat.messages[0].text, "m50");
        assert_eq!(chat.messages[99].text, "m149");
        assert_eq!(chat.messages[0].from, "conn-7");
    }

    #[test]
    fn refuses_empty_and_overlong_text_and_changes_nothing() {
        let mut chat = Chat::default();
        say(&mut chat, "hello").unwrap();
        let before = chat.clone();
        for bad in [String::new(), "é".repeat(MAX_TEXT_CHARS + 1)] {
            assert_eq!(say(&mut chat, &bad).unwrap_err().code, "invalid_text");
        }
        assert_eq!(chat, before);
        say(&mut chat, &"é".repeat(MAX_TEXT_CHARS)).unwrap();
    }

    #[test]
    fn speaks_the_documented_json() {
        let op: ChatOp = serde_json::from_str(r#"{"type":"say","text":"hi"}"#).unwrap();
        assert_eq!(op, ChatOp::Say { text: "hi".into() });
        let mut chat = Chat::default();
        chat.apply(&Member::open(ConnId(1)), &op).unwrap();
        assert_eq!(
            serde_json::to_string(&chat).unwrap(),
            r#"{"messages":[{"from":"conn-1","text":"hi"}]}"#
        );
    }
}
