//! The scripted clients both harnesses drive, and the checker of what they
//! saw: one model of what each client sent and received, shared by the
//! simulation of the core ([`crate::sim`]) and the real driver under a fake
//! runtime ([`crate::driven`]), and one set of steps their property tests
//! draw from.
//!
//! A client registers players in the tournament: a fresh, unique name when
//! the op is valid, an empty one (which the app refuses) when not. So the
//! checker can tell, from the stored state alone, which ops were applied.

use std::collections::{BTreeMap, BTreeSet};

use crate::Counts;
use gathering_core::protocol::{self, CLOSE_DISPERSED, CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    ClientMsg, ConnId, Delivery, Encoding, Frame, GatheringId, Inbound, Instant, NOT_DURABLE,
    STORAGE_FAILED, ServerMsg,
};

/// What the tournament's server sends.
pub type Server = ServerMsg<TournamentOp, Tournament>;

/// The gatherings the property tests use.
pub const IDS: [&str; 3] = ["g0", "g1", "g2"];

/// [`IDS`], parsed.
pub fn ids() -> Vec<GatheringId> {
    IDS.iter()
        .map(|s| GatheringId::parse(s).expect("a valid id"))
        .collect()
}

/// What the checker knows about one client connection.
#[derive(Debug)]
pub struct Client {
    /// The gathering it joined.
    pub gathering: GatheringId,
    /// Its encoding.
    pub encoding: Encoding,
    /// The close code, once a gathering closed it.
    pub closed: Option<u16>,
    /// Whether it left (closed its socket from its side).
    pub left: bool,
    /// How many `dispersed` messages it received.
    pub dispersed: u32,
    /// Highest forward seq received.
    pub highest_forward: u64,
    /// Highest forward seq acknowledged.
    pub acked_upto: u64,
    /// Forwards received and not acknowledged: seq -> when last (re)sent.
    pub unacked: BTreeMap<u64, Instant>,
}

impl Client {
    /// Whether it can still send: neither closed nor left.
    pub fn is_open(&self) -> bool {
        self.closed.is_none() && !self.left
    }
}

/// An op a client sent: where, the player it registers, whether valid.
#[derive(Debug)]
struct Request {
    gathering: GatheringId,
    name: String,
    valid: bool,
}

/// Something a client sends, for the harness to take to the hall.
#[derive(Debug)]
pub struct Sent {
    /// The gathering it is for.
    pub gathering: GatheringId,
    /// The message.
    pub inbound: Inbound,
    /// Whether the core counts it as activity (joins and frames that
    /// decode do).
    pub activity: bool,
}

/// Every client ever connected, what they sent, and what they were told.
#[derive(Debug, Default)]
pub struct Clients {
    /// Every client, by connection.
    pub clients: BTreeMap<ConnId, Client>,
    next_conn: u64,
    next_request: u64,
    /// Valid ops sent, by gathering: the player names registered.
    pub sent_valid: BTreeMap<GatheringId, BTreeSet<String>>,
    /// Valid ops acknowledged, by gathering.
    pub acked: BTreeMap<GatheringId, BTreeSet<String>>,
    /// Valid ops refused because storage failed (their senders were told,
    /// so they are not owed), by gathering.
    withdrawn: BTreeMap<GatheringId, BTreeSet<String>>,
    requests: BTreeMap<u64, Request>,
    /// How often acks, re-sent forwards and refusals arrived (`acks`,
    /// `resends`, `rejections`).
    pub stats: Counts,
}

impl Clients {
    /// Clients that can still send.
    pub fn open(&self) -> Vec<ConnId> {
        let open = self.clients.iter().filter(|(_, c)| c.is_open());
        open.map(|(id, _)| *id).collect()
    }

    /// A new client joins `id`, speaking `encoding`.
    pub fn join(&mut self, id: &GatheringId, encoding: Encoding) -> (ConnId, Sent) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let client = Client {
            gathering: id.clone(),
            encoding,
            closed: None,
            left: false,
            dispersed: 0,
            highest_forward: 0,
            acked_upto: 0,
            unacked: BTreeMap::new(),
        };
        self.clients.insert(conn, client);
        let inbound = Inbound::open_join(conn, encoding);
        (conn, sent(id, inbound, true))
    }

    /// Client `conn` closes its socket.
    pub fn leave(&mut self, conn: ConnId) -> Option<Sent> {
        let c = self.clients.get_mut(&conn).filter(|c| c.is_open())?;
        c.left = true;
        Some(sent(
            &c.gathering,
            Inbound::Leave { conn, clean: true },
            false,
        ))
    }

    /// Client `conn` registers a player: a fresh unique name when `valid`,
    /// otherwise a name the tournament refuses.
    pub fn op(&mut self, conn: ConnId, valid: bool) -> Option<Sent> {
        let id = self
            .clients
            .get(&conn)
            .filter(|c| c.is_open())?
            .gathering
            .clone();
        self.next_request += 1;
        let request = self.next_request;
        let name = if valid {
            let name = format!("p{request}");
            let sent = self.sent_valid.entry(id.clone()).or_default();
            sent.insert(name.clone());
            name
        } else {
            String::new()
        };
        let op = TournamentOp::RegisterPlayer { name: name.clone() };
        let gathering = id.clone();
        self.requests.insert(
            request,
            Request {
                gathering,
                name,
                valid,
            },
        );
        self.message(conn, &ClientMsg::Op { id: request, op })
    }

    /// Client `conn` asks for the state.
    pub fn fetch(&mut self, conn: ConnId) -> Option<Sent> {
        self.next_request += 1;
        let id = self.next_request;
        self.message(conn, &ClientMsg::Fetch { id })
    }

    /// Client `conn` acknowledges every forward it has received.
    pub fn ack(&mut self, conn: ConnId) -> Option<Sent> {
        let c = self.clients.get_mut(&conn).filter(|c| c.is_open())?;
        let seq = c.highest_forward;
        if seq == 0 {
            return None;
        }
        c.unacked.retain(|s, _| *s > seq);
        c.acked_upto = seq;
        self.message(conn, &ClientMsg::Ack { seq })
    }

    /// Client `conn` sends bytes that are no message (not activity).
    pub fn garbage(&mut self, conn: ConnId) -> Option<Sent> {
        let c = self.clients.get(&conn).filter(|c| c.is_open())?;
        let frame = match c.encoding {
            Encoding::Json => Frame::Text("{\"type\":\"op\"".into()),
            Encoding::Postcard => Frame::Binary(vec![7, 7, 7].into()),
        };
        Some(sent(&c.gathering, Inbound::open_frame(conn, frame), false))
    }

    fn message(&self, conn: ConnId, msg: &ClientMsg<TournamentOp>) -> Option<Sent> {
        let c = self.clients.get(&conn).filter(|c| c.is_open())?;
        let frame = protocol::encode(msg, c.encoding).expect("client messages encode");
        Some(sent(&c.gathering, Inbound::open_frame(conn, frame), true))
    }

    /// `frame` reaches client `conn` at `now`, `delivery` as the gathering
    /// asked, while the store holds its gathering up to op `durable`.
    /// Returns `false` if the client is gone (its socket closed): the
    /// frame is dropped, as a host drops it.
    pub fn receive(
        &mut self,
        conn: ConnId,
        frame: &Frame,
        delivery: Delivery,
        now: Instant,
        durable: u64,
    ) -> bool {
        let Some(c) = self.clients.get_mut(&conn) else {
            panic!("a frame for unknown {conn}");
        };
        if !c.is_open() {
            return false;
        }
        assert_eq!(
            frame.encoding(),
            c.encoding,
            "{conn} answered in another encoding"
        );
        let g = c.gathering.clone();
        match protocol::decode::<Server>(frame).expect("the server's frames decode") {
            ServerMsg::Dispersed { .. } => {
                assert_eq!(
                    delivery,
                    Delivery::Once,
                    "a dispersed notice is never retried"
                );
                c.dispersed += 1;
                assert_eq!(c.dispersed, 1, "{conn} told twice that it dispersed");
            }
            ServerMsg::Forward { seq, .. } => {
                assert_eq!(delivery, Delivery::Retried, "a forward is retried");
                assert!(seq <= durable, "op {seq} of {g} forwarded before durable");
                // A re-send that crossed our ack, or came again.
                if seq <= c.acked_upto || c.unacked.insert(seq, now).is_some() {
                    self.stats.bump("resends");
                }
                c.highest_forward = c.highest_forward.max(seq);
            }
            ServerMsg::Ack { id, seq } => {
                assert!(
                    seq <= durable,
                    "op {seq} of {g} acked before durable ({durable})"
                );
                let Some(r) = self.requests.get(&id) else {
                    panic!("ack for unknown request {id}");
                };
                assert!(r.valid, "invalid op {id} was acknowledged");
                assert_eq!(r.gathering, g, "op {id} acked by another gathering");
                self.stats.bump("acks");
                self.acked.entry(g).or_default().insert(r.name.clone());
            }
            ServerMsg::Error {
                id: Some(id), code, ..
            } => {
                self.stats.bump("rejections");
                if let Some(r) = self.requests.get(&id) {
                    if code == NOT_DURABLE || code == STORAGE_FAILED {
                        let withdrawn = self.withdrawn.entry(g).or_default();
                        withdrawn.insert(r.name.clone());
                    } else {
                        assert!(!r.valid, "valid op {id} was refused: {code}");
                    }
                }
            }
            ServerMsg::Error { id: None, .. } => self.stats.bump("rejections"),
            ServerMsg::State { .. } => {}
            ServerMsg::Welcome { .. }
            | ServerMsg::Resync { .. }
            | ServerMsg::Presence { .. }
            | ServerMsg::PresenceDiff { .. } => {
                panic!("{conn} joined without a session and was sent a session's message")
            }
        }
        true
    }

    /// A gathering closed `conn` with `code`. Returns the gathering to tell
    /// of the leave (as a host's reader does once its socket closes),
    /// unless the client had left already.
    pub fn closed(&mut self, conn: ConnId, code: u16) -> Option<GatheringId> {
        let Some(c) = self.clients.get_mut(&conn) else {
            panic!("close for unknown {conn}");
        };
        assert!(c.closed.is_none(), "{conn} closed twice");
        c.closed = Some(code);
        if c.left {
            return None;
        }
        if code == CLOSE_DISPERSED {
            assert_eq!(
                c.dispersed, 1,
                "{conn} closed with 4000 without being told why"
            );
        }
        if c.dispersed == 1 {
            let after_notice = [CLOSE_DISPERSED, CLOSE_GOING_AWAY, CLOSE_INTERNAL];
            assert!(
                after_notice.contains(&code),
                "{conn} told of dispersal, closed {code}"
            );
        }
        c.unacked.clear();
        Some(c.gathering.clone())
    }

    /// Nothing was lost, once every gathering dispersed or shut down:
    /// every op owed is in the state `stored` holds for its gathering (each
    /// valid op sent, or only those acknowledged when `only_acked`: after
    /// a shutdown, or a failed write, which undoes the ops it carried), no
    /// op refused as not durable is, and no stored name was never sent;
    /// every client was told of a dispersal at most once and, unless it
    /// left, closed.
    pub fn check_final(&self, only_acked: bool, stored: &BTreeMap<GatheringId, Tournament>) {
        let owed = if only_acked {
            &self.acked
        } else {
            &self.sent_valid
        };
        let none = BTreeSet::new();
        for (id, names) in owed {
            let withdrawn = self.withdrawn.get(id).unwrap_or(&none);
            let mut names = names.difference(withdrawn).peekable();
            if names.peek().is_none() {
                continue;
            }
            let Some(state) = stored.get(id) else {
                panic!("{id} took ops but was never persisted");
            };
            for name in names {
                assert!(
                    state.players.contains_key(name),
                    "op registering {name} in {id} was lost"
                );
            }
        }
        for (id, names) in &self.withdrawn {
            let Some(state) = stored.get(id) else {
                continue;
            };
            for name in names {
                assert!(
                    !state.players.contains_key(name),
                    "op registering {name} in {id} was refused as not durable, yet stored"
                );
            }
        }
        for (id, state) in stored {
            for name in state.players.keys() {
                let sent = self.sent_valid.get(id).is_some_and(|s| s.contains(name));
                assert!(sent, "{name} in {id} was never sent as a valid op");
            }
        }
        for (conn, c) in &self.clients {
            assert!(c.dispersed <= 1, "{conn} told {} times", c.dispersed);
            assert!(c.left || c.closed.is_some(), "{conn} was never closed");
        }
    }
}

fn sent(id: &GatheringId, inbound: Inbound, activity: bool) -> Sent {
    Sent {
        gathering: id.clone(),
        inbound,
        activity,
    }
}

/// A client's step in a property test; clients are picked among the open
/// ones by index, wrapping ([`crate::pick`]).
#[derive(Clone, Debug)]
pub enum ClientStep {
    /// A new client joins `IDS[g]`, in postcard if `binary`.
    Join {
        /// Which gathering.
        g: usize,
        /// Postcard, else JSON.
        binary: bool,
    },
    /// An open client leaves.
    Leave {
        /// Which.
        c: usize,
    },
    /// An open client sends an op, valid or not.
    Op {
        /// Which.
        c: usize,
        /// Whether the app accepts it.
        valid: bool,
    },
    /// An open client fetches the state.
    Fetch {
        /// Which.
        c: usize,
    },
    /// An open client acknowledges what it received.
    Ack {
        /// Which.
        c: usize,
    },
    /// An open client sends a frame that is no message.
    Garbage {
        /// Which.
        c: usize,
    },
}

impl ClientStep {
    /// What the step makes a client send, if it picks one that can.
    pub fn play(&self, clients: &mut Clients, ids: &[GatheringId]) -> Option<Sent> {
        let open = clients.open();
        let pick = |c: usize| crate::pick(&open, c);
        match *self {
            ClientStep::Join { g, binary } => {
                let encoding = if binary {
                    Encoding::Postcard
                } else {
                    Encoding::Json
                };
                Some(clients.join(&ids[g], encoding).1)
            }
            ClientStep::Leave { c } => clients.leave(pick(c)?),
            ClientStep::Op { c, valid } => clients.op(pick(c)?, valid),
            ClientStep::Fetch { c } => clients.fetch(pick(c)?),
            ClientStep::Ack { c } => clients.ack(pick(c)?),
            ClientStep::Garbage { c } => clients.garbage(pick(c)?),
        }
    }
}
