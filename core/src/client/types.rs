//! What a room tells its user and asks of its driver.

use std::collections::BTreeMap;

use crate::clock::Duration;
use crate::protocol::ClientMsg;

/// Where a room is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Joining for the first time (or again after a dispersal).
    Connecting,
    /// Welcomed: ops flow.
    Open,
    /// The connection dropped; joining again (after a backoff).
    Reconnecting,
    /// The gathering dispersed (4000); the next op joins again.
    Dispersed,
    /// For good: left, or closed with a code no retry fixes.
    Closed,
}

/// A room's status and what led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomStatus {
    /// Where it is.
    pub status: Status,
    /// The close code that led here, if one did.
    pub code: Option<u16>,
    /// Why, for people (the close reason, or the dispersal's).
    pub reason: String,
}

/// Why an op was not applied (or may not have been, for `closed`/`left`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The server's code, or the room's: `queue_full`, `closed`, `left`.
    pub code: String,
    /// For people.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        Refusal {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// What the room asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomAction<O, P> {
    /// Open a connection with the room's session (dropping any other),
    /// resuming after `since` in `epoch`; first ask for a new token if
    /// `fresh_token`.
    Connect {
        /// The last seq delivered (0 for none: the state comes in a resync).
        since: u64,
        /// The epoch of that history, if any.
        epoch: Option<u64>,
        /// The token held expired (4003), or none was asked for yet.
        fresh_token: bool,
        /// The cluster node the last close (4001) named as the
        /// gathering's owner: join with `&node=` so that the cluster's
        /// front pins the join to it. For this attempt only.
        node: Option<String>,
    },
    /// Send this on the open connection.
    Send(ClientMsg<O, P>),
    /// Close the connection with 1000, and report nothing more of it.
    Close,
}

/// What the room tells its user.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent<O, S, P> {
    /// The status changed.
    Status(RoomStatus),
    /// The whole state as of op `seq` (the first join, and each resync).
    State {
        /// The last op it holds.
        seq: u64,
        /// The state.
        state: S,
    },
    /// Op number `seq`, once, in order.
    Op {
        /// Its number.
        seq: u64,
        /// The op.
        op: O,
        /// Whether this room sent it.
        own: bool,
    },
    /// Who is here, after each change.
    Presence(BTreeMap<String, Option<P>>),
    /// Op `ticket` (from [`Room::op`]) is durable as `seq`, or was refused.
    Settled {
        /// What [`Room::op`] returned.
        ticket: u64,
        /// Its seq, or why not.
        result: Result<u64, Refusal>,
    },
}

/// A room's bounds.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// Unsettled ops at most; past it [`Room::op`] refuses with `queue_full`.
    pub max_queued: usize,
    /// Ops sent and unanswered at most.
    pub max_in_flight: usize,
    /// A join not welcomed within this is given up, as a lost connection.
    pub connect_timeout: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            max_queued: 1000,
            max_in_flight: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }
}
