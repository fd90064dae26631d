//! The protocol between the tabs of one database (see [`crate::tabs`]):
//! one typed message, [`TabMsg`], in an [`Envelope`] that says which tab
//! sent it and for which tab it is, posted on the database's
//! `BroadcastChannel` as postcard in a `Uint8Array`. A message that does
//! not decode (another version of this crate in another tab, say) is
//! ignored, as a message for another tab is.

use std::rc::Rc;

use gathering_core::{ConnId, Frame, GatheringId, Member, SessionJoin};
use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::BroadcastChannel;

use crate::listing::Listed;

/// What one tab tells another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TabMsg {
    /// Follower, on arrival: who owns the database?
    Hello,
    /// Follower: join its connection `conn` to gathering `id`, as
    /// `member` (`None`: a member of its own, every right).
    Join {
        /// The connection's id in the follower.
        conn: u64,
        /// The gathering's id, as the follower parsed it.
        id: String,
        /// Who it is.
        member: Option<Member>,
        /// Its session, and where it resumes: (session, since, epoch).
        session: Option<(String, Option<u64>, Option<u64>)>,
    },
    /// Follower: a frame its connection `conn` sent.
    Frame {
        /// The connection's id in the follower.
        conn: u64,
        /// The frame.
        data: Data,
    },
    /// Follower: its connection `conn` closed.
    Leave {
        /// The connection's id in the follower.
        conn: u64,
    },
    /// Follower: send me the live gatherings.
    List,
    /// Owner: I own the database (to one tab's `Hello`, or to everyone
    /// when it takes over, which ends what the old owner served).
    Owner,
    /// Owner: a frame for the follower's connection `conn`.
    Out {
        /// The connection's id in the follower.
        conn: u64,
        /// The frame.
        data: Data,
    },
    /// Owner: the follower's connection `conn` was closed.
    Close {
        /// The connection's id in the follower.
        conn: u64,
        /// WebSocket close code.
        code: u16,
        /// Why, for people.
        reason: String,
    },
    /// Owner: the live gatherings, as [`crate::Host::gatherings`] lists them.
    Listing(Vec<Listed>),
}

/// A frame as it crosses between tabs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Data {
    /// JSON, from or for a string.
    Text(String),
    /// Postcard, from or for a `Uint8Array`.
    Binary(Vec<u8>),
}

impl From<&Frame> for Data {
    fn from(frame: &Frame) -> Self {
        match frame {
            Frame::Text(text) => Data::Text(text.to_string()),
            Frame::Binary(bytes) => Data::Binary(bytes.to_vec()),
        }
    }
}

impl From<Data> for Frame {
    fn from(data: Data) -> Self {
        match data {
            Data::Text(text) => Frame::Text(text.into()),
            Data::Binary(bytes) => Frame::Binary(bytes.into()),
        }
    }
}

/// A [`TabMsg`] with its sender and, unless it is for every tab, its
/// recipient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending tab.
    pub from: String,
    /// The tab it is for; `None`: every tab.
    pub to: Option<String>,
    /// The message.
    pub msg: TabMsg,
}

impl Envelope {
    /// The envelope in `data`, a message of the channel; `None` if it is
    /// not one of ours.
    pub fn from_js(data: &JsValue) -> Option<Envelope> {
        let bytes = data.dyn_ref::<Uint8Array>()?.to_vec();
        postcard::from_bytes(&bytes).ok()
    }
}

/// A tab's end of the database's channel, as its connections use it.
#[derive(Clone, Debug)]
pub struct Link {
    channel: BroadcastChannel,
    tab: Rc<str>,
}

impl Link {
    /// This tab's end of `channel`, as tab `tab`.
    pub fn new(channel: BroadcastChannel, tab: Rc<str>) -> Self {
        Link { channel, tab }
    }

    /// This tab's name on the channel.
    pub fn tab(&self) -> &str {
        &self.tab
    }

    /// The channel.
    pub fn channel(&self) -> &BroadcastChannel {
        &self.channel
    }

    /// Posts `msg` from this tab to tab `to` (`None`: every tab); `false`
    /// if the channel is closed.
    pub fn post(&self, to: Option<&str>, msg: TabMsg) -> bool {
        let envelope = Envelope {
            from: self.tab.to_string(),
            to: to.map(str::to_owned),
            msg,
        };
        let Ok(bytes) = postcard::to_allocvec(&envelope) else {
            return false;
        };
        let data = Uint8Array::from(&bytes[..]);
        self.channel.post_message(&data).is_ok()
    }

    /// Asks the owner to join `conn` to gathering `id`, as `member` if
    /// given.
    pub fn join(
        &self,
        conn: ConnId,
        id: &GatheringId,
        member: Option<&Member>,
        session: Option<&SessionJoin>,
    ) -> bool {
        let session = session.map(|s| (s.session.to_string(), s.since, s.epoch));
        let msg = TabMsg::Join {
            conn: conn.0,
            id: id.as_str().to_owned(),
            member: member.cloned(),
            session,
        };
        self.post(None, msg)
    }

    /// Sends `frame` from `conn` to the owner.
    pub fn frame(&self, conn: ConnId, frame: &Frame) -> bool {
        let data = Data::from(frame);
        self.post(None, TabMsg::Frame { conn: conn.0, data })
    }

    /// Tells the owner `conn` closed.
    pub fn leave(&self, conn: ConnId) {
        self.post(None, TabMsg::Leave { conn: conn.0 });
    }
}
