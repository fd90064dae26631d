//! The client's side of a session, sans-IO: one [`Room`] keeps one session
//! with one gathering across dropped connections and server restarts. It
//! never opens a socket or reads a clock: a driver feeds it what arrived
//! and the time, and carries out the [`RoomAction`]s it asks for (the
//! tokio driver is `gathering_native::client::Room`). It is the Rust twin
//! of the TypeScript client's room (`host-wasm/client/src/room.ts`), with
//! the same guarantees:
//!
//! - each op keeps its id once it may have been sent, so the server's
//!   session table applies it exactly once however often it is sent again
//!   (docs/PROTOCOL.md, "Sessions");
//! - every op after the last [`RoomEvent::State`] is delivered once, in seq
//!   order, own ops flagged;
//! - after a close, [`close_action`] decides: back off (full jitter), join
//!   again at once, with a fresh token, stay dispersed until the next op,
//!   or never.

mod policy;
mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use policy::{Backoff, CloseAction, close_action, moved_to};
pub use types::{Refusal, RoomAction, RoomConfig, RoomEvent, RoomStatus, Status};

use crate::clock::{Duration, Instant};
use crate::protocol::{self, ClientMsg, DisperseReason, ServerMsg};

/// How long an ack of forwards waits to cover more of them.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Forwards one ack covers at most.
const ACK_EVERY: u32 = 32;
/// The server takes a presence update per 50 ms at most.
const PRESENCE_INTERVAL: Duration = Duration::from_millis(50);
/// The wait before an op refused for a rate or a window goes again.
const RETRY_LATER: Duration = Duration::from_millis(250);

/// An op not yet settled.
struct Pending<O> {
    ticket: u64,
    op: O,
    /// Sent on the current connection.
    sent: bool,
    /// Ever sent: its id may be applied, so it never changes.
    may_be_applied: bool,
    /// The welcome said its id was applied; its ack is awaited.
    applied: bool,
}

/// The connection's stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    None,
    /// Asked for; not welcomed before `deadline`.
    Opening {
        deadline: Instant,
    },
    Welcomed,
}

/// One session with one gathering; see the module's documentation.
pub struct Room<O, S, P> {
    config: RoomConfig,
    status: RoomStatus,
    conn: Conn,
    member: Option<String>,
    members: BTreeMap<String, Option<P>>,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    token_fresh: bool,
    hurried: bool,
    /// The node a 4001 named, for the next attempt.
    node: Option<String>,
    dispersed: Option<DisperseReason>,
    // The history delivered.
    epoch: Option<u64>,
    conn_epoch: Option<u64>,
    has_state: bool,
    delivered: u64,
    buffer: BTreeMap<u64, (O, bool)>,
    own_seqs: BTreeSet<u64>,
    // Ops, by id.
    next_id: u64,
    next_ticket: u64,
    pending: BTreeMap<u64, Pending<O>>,
    unsent: VecDeque<u64>,
    in_flight: usize,
    unresolved: usize,
    retrying: Vec<(u64, bool)>,
    retry_at: Option<Instant>,
    // Owed to the server.
    owed_ack: Option<(u64, u32)>,
    ack_at: Option<Instant>,
    presence: Option<P>,
    presence_dirty: bool,
    presence_at: Option<Instant>,
    last_presence: Option<Instant>,
    actions: VecDeque<RoomAction<O, P>>,
    events: VecDeque<RoomEvent<O, S, P>>,
    _state: std::marker::PhantomData<S>,
}

impl<O: Clone, S, P: Clone> Room<O, S, P> {
    /// A room that joins at once (the first [`RoomAction::Connect`] is
    /// queued); `seed` drives the backoff's jitter.
    pub fn new(config: RoomConfig, seed: u64, presence: Option<P>, now: Instant) -> Self {
        let mut room = Room {
            config,
            status: RoomStatus {
                status: Status::Connecting,
                code: None,
                reason: String::new(),
            },
            conn: Conn::None,
            member: None,
            members: BTreeMap::new(),
            backoff: Backoff::new(seed),
            reconnect_at: None,
            token_fresh: false,
            hurried: false,
            node: None,
            dispersed: None,
            epoch: None,
            conn_epoch: None,
            has_state: false,
            delivered: 0,
            buffer: BTreeMap::new(),
            own_seqs: BTreeSet::new(),
            next_id: 1,
            next_ticket: 1,
            pending: BTreeMap::new(),
            unsent: VecDeque::new(),
            in_flight: 0,
            unresolved: 0,
            retrying: Vec::new(),
            retry_at: None,
            owed_ack: None,
            ack_at: None,
            presence_dirty: presence.is_some(),
            presence,
            presence_at: None,
            last_presence: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            _state: std::marker::PhantomData,
        };
        room.connect(now);
        room
    }

    /// The backoff, to tune its base, cap and reset.
    pub fn backoff_mut(&mut self) -> &mut Backoff {
        &mut self.backoff
    }

    /// Where the room is.
    pub fn status(&self) -> &RoomStatus {
        &self.status
    }

    /// The member it acts as, once welcomed.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The last seq delivered.
    pub fn seq(&self) -> u64 {
        self.delivered
    }

    /// Unsettled ops.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<RoomAction<O, P>> {
        self.actions.pop_front()
    }

    /// The next thing to tell the user, if any.
    pub fn poll_event(&mut self) -> Option<RoomEvent<O, S, P>> {
        self.events.pop_front()
    }

    /// When [`Room::tick`] is next due.
    pub fn deadline(&self) -> Option<Instant> {
        let opening = match self.conn {
            Conn::Opening { deadline } => Some(deadline),
            _ => None,
        };
        [
            opening,
            self.reconnect_at,
            self.retry_at,
            self.ack_at,
            self.presence_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies `op`: returns its ticket, which a later
    /// [`RoomEvent::Settled`] carries. Queued while disconnected; on a
    /// dispersed room it joins again.
    pub fn op(&mut self, now: Instant, op: O) -> Result<u64, Refusal> {
        if self.status.status == Status::Closed {
            return Err(Refusal::new("closed", "the room is closed"));
        }
        if self.pending.len() >= self.config.max_queued {
            return Err(Refusal::new(
                "queue_full",
                format!(
                    "{} ops are waiting to be sent (max_queued); wait for some to settle",
                    self.pending.len()
                ),
            ));
        }
        let (id, ticket) = (self.next_id, self.next_ticket);
        self.next_id += 1;
        self.next_ticket += 1;
        self.pending.insert(
            id,
            Pending {
                ticket,
                op,
                sent: false,
                may_be_applied: false,
                applied: false,
            },
        );
        self.unsent.push_back(id);
        if self.status.status == Status::Dispersed {
            self.connect(now);
        } else {
            self.pump();
        }
        Ok(ticket)
    }

    /// Shows `data` to everyone here: the latest wins, at most every 50 ms,
    /// again after each reconnect.
    pub fn set_presence(&mut self, now: Instant, data: P) {
        self.presence = Some(data);
        self.presence_dirty = true;
        self.send_presence(now);
    }

    /// Joins again now, unless open, joining, or left.
    pub fn rejoin(&mut self, now: Instant) {
        if matches!(self.status.status, Status::Open | Status::Connecting) {
            return;
        }
        if self.status.status == Status::Closed && self.status.reason == "left" {
            return;
        }
        self.connect(now);
    }

    /// Leaves for good: closes with 1000; unsettled ops are refused with `left`.
    pub fn leave(&mut self) {
        if self.conn != Conn::None {
            self.flush_ack();
            self.actions.push_back(RoomAction::Close);
        }
        self.end(1000, "left", "left");
    }

    /// Timers due at `now`: a reconnect, a handshake given up, an ack, presence, retries.
    pub fn tick(&mut self, now: Instant) {
        if let Conn::Opening { deadline } = self.conn
            && deadline <= now
        {
            self.actions.push_back(RoomAction::Close);
            self.closed(now, 1006, "no welcome in time");
        }
        if self.reconnect_at.is_some_and(|at| at <= now) {
            self.reconnect_at = None;
            self.connect(now);
        }
        if self.ack_at.is_some_and(|at| at <= now) {
            self.flush_ack();
        }
        if self.presence_at.is_some_and(|at| at <= now) {
            self.presence_at = None;
            self.send_presence(now);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.retry_held();
        }
    }

    /// The current connection closed with `code` (1006 if it ended
    /// without a close frame).
    pub fn closed(&mut self, now: Instant, code: u16, reason: &str) {
        if self.conn == Conn::None {
            return;
        }
        let was_welcomed = self.conn == Conn::Welcomed;
        self.conn = Conn::None;
        self.disconnected(now);
        let dispersed = self.dispersed.take();
        let hurried = std::mem::take(&mut self.hurried);
        if code == protocol::CLOSE_MOVED {
            self.node = moved_to(reason);
        }
        match close_action(code) {
            CloseAction::Dispersed => {
                self.set_members(BTreeMap::new());
                let why = dispersed.map_or_else(|| reason.to_owned(), |r| r.as_str().to_owned());
                self.set_status(Status::Dispersed, Some(code), why);
                if !self.pending.is_empty() {
                    self.connect(now);
                }
            }
            CloseAction::Never => self.end(code, reason, "closed"),
            action @ (CloseAction::Now | CloseAction::Token) => {
                if action == CloseAction::Token {
                    self.token_fresh = false;
                }
                if was_welcomed || !hurried {
                    self.hurried = true;
                    self.set_status(Status::Reconnecting, Some(code), reason.to_owned());
                    self.connect(now);
                } else {
                    self.back_off(now, code, reason);
                }
            }
            CloseAction::Backoff => {
                let why = dispersed.map_or_else(|| reason.to_owned(), |r| r.as_str().to_owned());
                self.back_off(now, code, &why);
            }
        }
    }

    /// A message arrived on the current connection.
    pub fn received(&mut self, now: Instant, msg: ServerMsg<O, S, P>) {
        match msg {
            ServerMsg::Welcome {
                member,
                epoch,
                last_op,
                ..
            } => self.welcome(now, member, epoch, last_op),
            ServerMsg::Resync { seq, state } => self.state(seq, state),
            ServerMsg::Forward { seq, op } => {
                self.owe_ack(now, seq);
                if seq > self.delivered && !self.buffer.contains_key(&seq) {
                    let own = self.own_seqs.contains(&seq);
                    self.buffer.insert(seq, (op, own));
                }
                self.deliver();
            }
            ServerMsg::Ack { id, seq } => self.acked(id, seq),
            ServerMsg::Error {
                id: Some(id),
                code,
                message,
            } => self.refused(now, id, code, message),
            ServerMsg::Dispersed { reason } => self.dispersed = Some(reason),
            ServerMsg::Presence { members } => self.set_members(members),
            ServerMsg::PresenceDiff { joins, leaves } => {
                let mut members = std::mem::take(&mut self.members);
                for gone in leaves {
                    members.remove(&gone);
                }
                members.extend(joins);
                self.set_members(members);
            }
            ServerMsg::Error { id: None, .. } | ServerMsg::State { .. } => {}
        }
    }

    fn connect(&mut self, now: Instant) {
        self.reconnect_at = None;
        if self.conn != Conn::None {
            self.actions.push_back(RoomAction::Close);
            self.disconnected(now);
        }
        if self.status.status != Status::Reconnecting {
            self.set_status(Status::Connecting, None, String::new());
        }
        self.conn = Conn::Opening {
            deadline: now + self.config.connect_timeout,
        };
        self.actions.push_back(RoomAction::Connect {
            since: if self.has_state { self.delivered } else { 0 },
            epoch: if self.has_state { self.epoch } else { None },
            fresh_token: !std::mem::replace(&mut self.token_fresh, true),
            node: self.node.take(),
        });
    }

    fn back_off(&mut self, now: Instant, code: u16, reason: &str) {
        self.set_status(Status::Reconnecting, Some(code), reason.to_owned());
        self.reconnect_at = Some(now + self.backoff.next_delay());
    }

    /// What ends with a connection.
    fn disconnected(&mut self, now: Instant) {
        self.backoff.closed(now);
        self.in_flight = 0;
        for p in self.pending.values_mut() {
            p.sent = false;
        }
        self.owed_ack = None;
        self.ack_at = None;
        self.presence_at = None;
        self.presence_dirty |= self.presence.is_some();
    }

    fn end(&mut self, code: u16, reason: &str, refusal: &str) {
        self.conn = Conn::None;
        self.reconnect_at = None;
        self.retry_at = None;
        self.ack_at = None;
        self.presence_at = None;
        self.unsent.clear();
        self.retrying.clear();
        self.unresolved = 0;
        self.set_members(BTreeMap::new());
        self.set_status(Status::Closed, Some(code), reason.to_owned());
        let message = if refusal == "left" {
            "the room was left before this op was answered; it may or may not have applied"
                .to_owned()
        } else {
            format!("the room closed ({code}: {reason}); this op may or may not have applied")
        };
        for (_, p) in std::mem::take(&mut self.pending) {
            self.events.push_back(RoomEvent::Settled {
                ticket: p.ticket,
                result: Err(Refusal::new(refusal, message.clone())),
            });
        }
    }

    fn welcome(&mut self, now: Instant, member: String, epoch: u64, last_op: Option<u64>) {
        if self.conn == Conn::None {
            return;
        }
        self.conn = Conn::Welcomed;
        self.member = Some(member);
        self.conn_epoch = Some(epoch);
        self.backoff.opened(now);
        self.buffer.clear();
        if self.epoch != Some(epoch) {
            self.own_seqs.clear();
        }
        let applied = last_op.unwrap_or(0);
        self.next_id = self.next_id.max(applied + 1);
        // Ids at or below the highest applied: those that may have been
        // sent were applied (their acks will say as what); those never sent
        // take a fresh id, or the server would take them for another op.
        self.unresolved = 0;
        let mut fresh = Vec::new();
        for (&id, p) in self.pending.iter_mut() {
            p.applied = id <= applied && p.may_be_applied;
            if p.applied {
                self.unresolved += 1;
            } else if id <= applied {
                fresh.push(id);
            }
        }
        for id in fresh {
            if let Some(p) = self.pending.remove(&id) {
                self.pending.insert(self.next_id, p);
                self.next_id += 1;
            }
        }
        self.retrying.clear();
        self.retry_at = None;
        self.unsent = self.pending.keys().copied().collect();
        self.hurried = false;
        self.set_status(Status::Open, None, String::new());
        self.send_presence(now);
        self.pump();
    }

    fn state(&mut self, seq: u64, state: S) {
        self.has_state = true;
        self.epoch = self.conn_epoch;
        self.delivered = seq;
        self.buffer = self.buffer.split_off(&(seq + 1));
        self.own_seqs = self.own_seqs.split_off(&(seq + 1));
        self.events.push_back(RoomEvent::State { seq, state });
        self.deliver();
    }

    fn acked(&mut self, id: u64, seq: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if p.sent {
            self.in_flight -= 1;
        }
        if p.applied {
            self.unresolved -= 1;
        }
        if seq > self.delivered {
            self.own_seqs.insert(seq);
            self.buffer.insert(seq, (p.op, true));
        }
        self.events.push_back(RoomEvent::Settled {
            ticket: p.ticket,
            result: Ok(seq),
        });
        self.deliver();
        self.pump();
    }

    fn refused(&mut self, now: Instant, id: u64, code: String, message: String) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if std::mem::take(&mut p.sent) {
            self.in_flight -= 1;
        }
        let later = matches!(code.as_str(), "rate_limited" | "too_many_in_flight");
        if later || matches!(code.as_str(), "not_durable" | "storage_failed") {
            // For a rate or a window: not applied, so a new id (a lower id
            // than the highest applied is stale). Not durable: it may yet
            // be, so the same id.
            self.retrying.push((id, later));
            self.retry_at.get_or_insert(now + RETRY_LATER);
            self.pump();
            return;
        }
        if let Some(p) = self.pending.remove(&id) {
            if p.applied {
                self.unresolved -= 1;
            }
            self.events.push_back(RoomEvent::Settled {
                ticket: p.ticket,
                result: Err(Refusal { code, message }),
            });
        }
        self.deliver();
        self.pump();
    }

    fn retry_held(&mut self) {
        for (id, new_id) in std::mem::take(&mut self.retrying) {
            if self.pending.get(&id).is_none_or(|p| p.sent) {
                continue;
            }
            let id = match (new_id, self.pending.remove(&id)) {
                (true, Some(mut p)) => {
                    p.may_be_applied = false;
                    let fresh = self.next_id;
                    self.next_id += 1;
                    self.pending.insert(fresh, p);
                    fresh
                }
                (_, Some(p)) => {
                    self.pending.insert(id, p);
                    id
                }
                (_, None) => continue,
            };
            self.unsent.push_back(id);
        }
        self.pump();
    }

    fn pump(&mut self) {
        if self.conn != Conn::Welcomed {
            return;
        }
        while self.in_flight < self.config.max_in_flight {
            let Some(id) = self.unsent.pop_front() else {
                return;
            };
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.sent {
                continue;
            }
            p.sent = true;
            p.may_be_applied = true;
            let op = p.op.clone();
            self.in_flight += 1;
            self.flush_ack();
            self.actions
                .push_back(RoomAction::Send(ClientMsg::Op { id, op }));
        }
    }

    fn owe_ack(&mut self, now: Instant, seq: u64) {
        let (owed, count) = self.owed_ack.get_or_insert((seq, 0));
        *owed = (*owed).max(seq);
        *count += 1;
        if *count >= ACK_EVERY {
            self.flush_ack();
        } else {
            self.ack_at.get_or_insert(now + ACK_DELAY);
        }
    }

    fn flush_ack(&mut self) {
        self.ack_at = None;
        if let Some((seq, _)) = self.owed_ack.take()
            && self.conn == Conn::Welcomed
        {
            self.actions
                .push_back(RoomAction::Send(ClientMsg::Ack { seq }));
        }
    }

    fn send_presence(&mut self, now: Instant) {
        if self.conn != Conn::Welcomed || !self.presence_dirty || self.presence_at.is_some() {
            return;
        }
        let Some(data) = self.presence.clone() else {
            return;
        };
        if let Some(last) = self.last_presence
            && now < last + PRESENCE_INTERVAL
        {
            self.presence_at = Some(last + PRESENCE_INTERVAL);
            return;
        }
        self.presence_dirty = false;
        self.last_presence = Some(now);
        self.actions
            .push_back(RoomAction::Send(ClientMsg::Presence { data }));
    }

    /// Emits buffered ops in seq order; held while an op the welcome said
    /// was applied waits for its ack (a forward could be its own).
    fn deliver(&mut self) {
        if !self.has_state || self.unresolved > 0 {
            return;
        }
        while let Some((op, own)) = self.buffer.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            self.own_seqs.remove(&self.delivered);
            self.events.push_back(RoomEvent::Op {
                seq: self.delivered,
                op,
                own,
            });
        }
    }

    fn set_members(&mut self, members: BTreeMap<String, Option<P>>) {
        let changed = !(self.members.is_empty() && members.is_empty());
        self.members = members;
        if changed {
            self.events
                .push_back(RoomEvent::Presence(self.members.clone()));
        }
    }

    fn set_status(&mut self, status: Status, code: Option<u16>, reason: String) {
        let next = RoomStatus {
            status,
            code,
            reason,
        };
        if self.status != next {
            self.status = next.clone();
            self.events.push_back(RoomEvent::Status(next));
        }
    }
}

#[cfg(test)]
mod tests;
