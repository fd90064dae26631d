//! A deterministic host for the core: a fake clock, FIFO mailboxes, an
//! in-memory store and scripted clients, with the system's invariants checked
//! after every step.
//!
//! The simulation plays the part of a real host exactly as the driver
//! contracts describe, but every delay (mailbox delivery, storage write, hall
//! turn) is a separate step the test chooses, so a property test can explore
//! the interleavings a real host might produce.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gathering_core::protocol::{self, CLOSE_DISPERSED, CLOSE_GOING_AWAY};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    Action, ClientMsg, Commit, Config, ConnId, Delivery, DisperseReason, Duration, Encoding, Event,
    Frame, Gathering, GatheringId, Hall, HallAction, HallEvent, Inbound, Instant, Loaded,
    NOT_DURABLE, Phase, STORAGE_FAILED, ServerMsg, Verdict,
};

type Server = ServerMsg<TournamentOp, Tournament>;

/// Something waiting in a gathering's mailbox; stamped with the time when it
/// is processed, as a real host would.
#[derive(Clone, Debug)]
enum Mail {
    Inbound(Inbound),
    Verdict(Verdict),
    Persisted(u64),
    PersistFailed,
}

/// A storage write the host has started and not yet finished.
#[derive(Debug)]
struct Write {
    id: GatheringId,
    generation: u64,
    commit: Commit,
}

/// One spawned gathering instance with its mailbox and what the checker
/// knows about it independently of the gathering's own bookkeeping.
struct Slot {
    gathering: Gathering<Tournament>,
    generation: u64,
    inbox: VecDeque<Mail>,
    /// Time of the last activity, as the checker counts it.
    last_activity: Instant,
    /// Connections this instance has processed a join for and not yet closed
    /// or seen leave.
    members: BTreeSet<ConnId>,
    /// Since when `members` has been empty, as the checker counts it.
    empty_since: Option<Instant>,
}

impl Slot {
    fn remove_member(&mut self, conn: ConnId, now: Instant) {
        if self.members.remove(&conn) && self.members.is_empty() {
            self.empty_since = Some(now);
        }
    }
}

/// What the checker knows about one client connection.
#[derive(Debug)]
pub struct Client {
    /// The gathering it joined.
    pub gathering: GatheringId,
    /// Its encoding.
    pub encoding: Encoding,
    /// Whether its socket has been closed by a gathering.
    pub closed: bool,
    /// The close code, once closed.
    pub close_code: Option<u16>,
    /// How many `dispersed` messages it received.
    pub dispersed: u32,
    /// Highest forward seq received.
    pub highest_forward: u64,
    /// Highest forward seq acknowledged.
    pub acked_upto: u64,
    /// Forwards received: seq -> time last (re)sent, while unacknowledged.
    pub unacked: BTreeMap<u64, Instant>,
    /// Whether it has left (its socket closed from its side).
    pub left: bool,
}

/// The simulated system.
pub struct Sim {
    /// The fake clock.
    pub now: Instant,
    /// The configuration every gathering gets.
    pub config: Config,
    hall: Hall,
    hall_inbox: VecDeque<HallEvent>,
    slots: BTreeMap<GatheringId, Slot>,
    next_generation: u64,
    /// Durable storage: what each gathering's commits left.
    pub storage: BTreeMap<GatheringId, Loaded>,
    writes: VecDeque<Write>,
    /// Generations a write failed for: the host writes none of their later
    /// commits (`Config::overlap_commits`).
    failed_generations: BTreeSet<u64>,
    /// Every client ever connected.
    pub clients: BTreeMap<ConnId, Client>,
    next_conn: u64,
    next_request: u64,
    /// Valid ops sent, by gathering: the player names registered.
    pub sent_valid: BTreeMap<GatheringId, BTreeSet<String>>,
    /// Ops acknowledged, by gathering.
    pub acked: BTreeMap<GatheringId, BTreeSet<String>>,
    /// Request id -> (gathering, name, valid).
    requests: BTreeMap<u64, (GatheringId, String, bool)>,
    spawned: BTreeSet<GatheringId>,
    /// Counts, for tests that want to see the interesting paths were taken.
    pub stats: Stats,
}

/// How often the interesting things happened.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Dispersals granted and completed.
    pub dispersals: u64,
    /// Dispersal requests refused because traffic was in flight.
    pub refusals: u64,
    /// Gatherings spawned again after a dispersal.
    pub respawns: u64,
    /// Forwards re-sent.
    pub resends: u64,
    /// Ops rejected with an error.
    pub rejections: u64,
    /// Storage writes made to fail.
    pub failed_writes: u64,
    /// Commits asked for while another of the same gathering was waiting.
    pub overlapped_commits: u64,
    /// Commits answered as failed, unwritten, after an earlier one failed.
    pub unwritten_after_failure: u64,
}

impl Sim {
    /// A system with no gatherings, at time zero.
    pub fn new(config: Config) -> Self {
        Sim {
            now: Instant::from_millis(1_000),
            config,
            hall: Hall::new(),
            hall_inbox: VecDeque::new(),
            slots: BTreeMap::new(),
            next_generation: 0,
            storage: BTreeMap::new(),
            writes: VecDeque::new(),
            failed_generations: BTreeSet::new(),
            clients: BTreeMap::new(),
            next_conn: 0,
            next_request: 0,
            sent_valid: BTreeMap::new(),
            acked: BTreeMap::new(),
            requests: BTreeMap::new(),
            spawned: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    /// The gathering ids currently spawned.
    pub fn live(&self) -> Vec<GatheringId> {
        self.slots.keys().cloned().collect()
    }

    /// The live gathering `id`, if spawned.
    pub fn gathering(&self, id: &GatheringId) -> Option<&Gathering<Tournament>> {
        self.slots.get(id).map(|s| &s.gathering)
    }

    /// Connections that can still send (not closed, not left).
    pub fn open_clients(&self) -> Vec<ConnId> {
        self.clients
            .iter()
            .filter(|(_, c)| !c.closed && !c.left)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A new client connects to `id`.
    pub fn join(&mut self, id: &GatheringId, encoding: Encoding) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.clients.insert(
            conn,
            Client {
                gathering: id.clone(),
                encoding,
                closed: false,
                close_code: None,
                dispersed: 0,
                highest_forward: 0,
                acked_upto: 0,
                unacked: BTreeMap::new(),
                left: false,
            },
        );
        self.hall_inbox.push_back(HallEvent::Route(
            id.clone(),
            Inbound::open_join(conn, encoding),
        ));
        conn
    }

    /// Client `conn` closes its socket.
    pub fn leave(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        if c.closed || c.left {
            return;
        }
        c.left = true;
        let id = c.gathering.clone();
        self.hall_inbox
            .push_back(HallEvent::Route(id, Inbound::Leave { conn }));
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMsg<TournamentOp>) {
        let Some(c) = self.clients.get(&conn) else {
            return;
        };
        if c.closed || c.left {
            return;
        }
        let frame = protocol::encode(msg, c.encoding).expect("client messages encode");
        let id = c.gathering.clone();
        self.hall_inbox
            .push_back(HallEvent::Route(id, Inbound::open_frame(conn, frame)));
    }

    /// Client `conn` registers a player: a fresh unique name when `valid`,
    /// otherwise a name the tournament must refuse.
    pub fn op(&mut self, conn: ConnId, valid: bool) {
        let Some(c) = self.clients.get(&conn) else {
            return;
        };
        let id = c.gathering.clone();
        self.next_request += 1;
        let request = self.next_request;
        let name = if valid {
            format!("p{request}")
        } else {
            String::new()
        };
        if c.closed || c.left {
            return;
        }
        if valid {
            self.sent_valid
                .entry(id.clone())
                .or_default()
                .insert(name.clone());
        }
        self.requests.insert(request, (id, name.clone(), valid));
        let op = TournamentOp::RegisterPlayer { name };
        self.send(conn, &ClientMsg::Op { id: request, op });
    }

    /// Client `conn` asks for the state.
    pub fn fetch(&mut self, conn: ConnId) {
        self.next_request += 1;
        let id = self.next_request;
        self.send(conn, &ClientMsg::Fetch { id });
    }

    /// Client `conn` acknowledges every forward it has received.
    pub fn ack(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let seq = c.highest_forward;
        if seq == 0 {
            return;
        }
        c.unacked.retain(|s, _| *s > seq);
        c.acked_upto = seq;
        self.send(conn, &ClientMsg::Ack { seq });
    }

    /// Client `conn` sends bytes that are not a message.
    pub fn garbage(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get(&conn) else {
            return;
        };
        if c.closed || c.left {
            return;
        }
        let frame = match c.encoding {
            Encoding::Json => Frame::Text("{\"type\":\"op\"".into()),
            Encoding::Postcard => Frame::Binary(vec![7, 7, 7].into()),
        };
        let id = c.gathering.clone();
        self.hall_inbox
            .push_back(HallEvent::Route(id, Inbound::open_frame(conn, frame)));
    }

    /// The hall processes its oldest input. Returns whether there was one.
    pub fn step_hall(&mut self) -> bool {
        let Some(event) = self.hall_inbox.pop_front() else {
            return false;
        };
        self.hall.handle(event);
        while let Some(action) = self.hall.poll_action() {
            self.on_hall_action(action);
        }
        true
    }

    /// Gathering `id` processes its oldest mail. Returns whether there was one.
    pub fn step_gathering(&mut self, id: &GatheringId) -> bool {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(id) else {
            return false;
        };
        let Some(mail) = slot.inbox.pop_front() else {
            return false;
        };
        let mut op_request: Option<u64> = None;
        let before = slot.gathering.app().clone();
        let event = match mail {
            Mail::Inbound(inbound) => {
                match &inbound {
                    Inbound::Join { conn, .. } => {
                        slot.last_activity = now;
                        slot.members.insert(*conn);
                        slot.empty_since = None;
                    }
                    Inbound::Leave { conn } => slot.remove_member(*conn, now),
                    Inbound::Frame { frame, .. } => {
                        if let Ok(msg) = protocol::decode::<ClientMsg<TournamentOp>>(frame) {
                            slot.last_activity = now;
                            if let ClientMsg::Op { id, .. } = msg {
                                op_request = Some(id);
                            }
                        }
                    }
                }
                Event::Message(now, inbound)
            }
            Mail::Verdict(v) => Event::Verdict(now, v),
            Mail::Persisted(seq) => Event::Persisted(now, seq),
            Mail::PersistFailed => Event::PersistFailed(now),
        };
        let actions = self.drive(id, event);
        // A rejected op must leave the state exactly as it was.
        if let Some(request) = op_request {
            let errored = actions.iter().any(|a| match a {
                Action::Send { frame, .. } => matches!(
                    protocol::decode::<Server>(frame),
                    Ok(ServerMsg::Error { id: Some(r), .. }) if r == request
                ),
                _ => false,
            });
            if errored && let Some(slot) = self.slots.get(id) {
                assert_eq!(
                    slot.gathering.app(),
                    &before,
                    "a rejected op changed the state"
                );
            }
        }
        true
    }

    /// Ticks gathering `id` at the current time, due or not.
    pub fn tick(&mut self, id: &GatheringId) {
        let now = self.now;
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let was_live = slot.gathering.phase() == Phase::Live;
        let idle_due = now >= slot.last_activity + self.config.idle_timeout;
        let actions = self.drive(id, Event::Tick(now));
        let asked = actions.iter().any(|a| matches!(a, Action::Disperse { .. }));
        if was_live && idle_due {
            assert!(
                asked,
                "{id} ticked at its idle deadline but did not ask to disperse"
            );
        }
    }

    /// The oldest storage write completes (or fails).
    pub fn step_storage(&mut self, fail: bool) -> bool {
        let Some(write) = self.writes.pop_front() else {
            return false;
        };
        // After a failed write, the host answers the gathering's later
        // commits as failed without writing them; the gathering may have
        // dispersed meanwhile (nothing it holds is durable any more).
        if self.failed_generations.contains(&write.generation) {
            self.stats.unwritten_after_failure += 1;
            if let Some(slot) = self.slots.get_mut(&write.id)
                && slot.generation == write.generation
            {
                slot.inbox.push_back(Mail::PersistFailed);
            }
            return true;
        }
        let Some(slot) = self.slots.get_mut(&write.id) else {
            panic!("a write completed for {} after it dispersed", write.id);
        };
        assert_eq!(
            slot.generation, write.generation,
            "write outlived its gathering"
        );
        if fail {
            self.stats.failed_writes += 1;
            self.failed_generations.insert(write.generation);
            slot.inbox.push_back(Mail::PersistFailed);
            return true;
        }
        let stored = self.storage.get(&write.id).map_or(0, Loaded::seq);
        assert!(
            write.commit.seq >= stored,
            "storage went backwards for {}",
            write.id
        );
        if let Some(first) = write.commit.log.first() {
            assert_eq!(
                first.seq,
                stored + 1,
                "a commit of {} does not continue its log",
                write.id
            );
        }
        let seq = write.commit.seq;
        self.storage
            .entry(write.id.clone())
            .or_default()
            .apply(write.commit);
        slot.inbox.push_back(Mail::Persisted(seq));
        true
    }

    /// The earliest deadline of any gathering.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.gathering.next_deadline())
            .map(|d| d.at)
            .min()
    }

    /// Moves the clock forward by `by`, ticking every gathering exactly at
    /// each of its deadlines on the way (zero lateness, as a perfect timer).
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..10_000 {
            match self.next_deadline() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    let due: Vec<GatheringId> = self
                        .slots
                        .iter()
                        .filter(|(_, s)| {
                            s.gathering
                                .next_deadline()
                                .is_some_and(|d| d.at <= self.now)
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in due {
                        self.tick(&id);
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.max(target);
        self.check_retry_duty();
    }

    /// Delivers everything queued (hall, mailboxes, storage, successfully)
    /// until nothing moves; bounded.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.step_hall();
            for id in self.live() {
                while self.step_gathering(&id) {
                    moved = true;
                }
            }
            while self.step_storage(false) {
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the system did not settle");
    }

    /// Settles, then lets time run until every gathering has dispersed;
    /// bounded.
    pub fn run_until_all_dispersed(&mut self) {
        for _ in 0..10_000 {
            self.settle();
            if self.slots.is_empty() && self.hall_inbox.is_empty() {
                return;
            }
            match self.next_deadline() {
                Some(at) => {
                    let by = at.saturating_since(self.now);
                    self.advance(by);
                }
                None => panic!(
                    "gatherings remain but none has a deadline: {:?}",
                    self.live()
                ),
            }
        }
        panic!("gatherings never all dispersed");
    }

    /// Invariants that hold once everything has dispersed: nothing was lost.
    pub fn check_final(&self) {
        // A failed write undoes the ops it carried: their senders are told
        // (those who left hear nothing, as with any op not yet acked), so
        // then only what was acknowledged is owed.
        let owed = if self.stats.failed_writes > 0 {
            &self.acked
        } else {
            &self.sent_valid
        };
        for (id, names) in owed {
            let state = self.stored_state(id);
            for name in names {
                assert!(
                    state.players.contains_key(name),
                    "valid op registering {name} in {id} was lost"
                );
            }
        }
        for (conn, c) in &self.clients {
            assert!(
                c.dispersed <= 1,
                "{conn} got {} dispersed messages",
                c.dispersed
            );
            if !c.left {
                assert!(c.closed, "{conn} was never closed");
            }
        }
        for (id, state) in self.storage.keys().map(|id| (id, self.stored_state(id))) {
            for name in state.players.keys() {
                assert!(
                    self.sent_valid.get(id).is_some_and(|s| s.contains(name)),
                    "{name} in {id} was never sent as a valid op"
                );
            }
        }
    }

    /// The durable state of `id`.
    pub fn stored_state(&self, id: &GatheringId) -> Tournament {
        let loaded = self.storage.get(id).cloned().unwrap_or_default();
        Gathering::<Tournament>::restore(id.clone(), self.config.clone(), self.now, &loaded)
            .expect("stored state restores")
            .app()
            .clone()
    }

    fn on_hall_action(&mut self, action: HallAction) {
        match action {
            HallAction::Spawn(id) => {
                assert!(!self.slots.contains_key(&id), "{id} spawned twice");
                let loaded = self.storage.get(&id).cloned().unwrap_or_default();
                let gathering: Gathering<Tournament> =
                    Gathering::restore(id.clone(), self.config.clone(), self.now, &loaded)
                        .expect("stored state restores");
                // Every acknowledged op is in the state the successor starts from.
                if let Some(acked) = self.acked.get(&id) {
                    for name in acked {
                        assert!(
                            gathering.app().players.contains_key(name),
                            "acked op {name} missing from the state {id} respawned with"
                        );
                    }
                }
                if !self.spawned.insert(id.clone()) {
                    self.stats.respawns += 1;
                }
                self.next_generation += 1;
                self.slots.insert(
                    id.clone(),
                    Slot {
                        gathering,
                        generation: self.next_generation,
                        inbox: VecDeque::new(),
                        last_activity: self.now,
                        members: BTreeSet::new(),
                        empty_since: Some(self.now),
                    },
                );
                self.hall_inbox.push_back(HallEvent::Spawned(id));
            }
            HallAction::Deliver(id, inbound) => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    panic!("the hall delivered to {id}, which is not spawned");
                };
                slot.inbox.push_back(Mail::Inbound(inbound));
            }
            HallAction::Verdict(id, verdict) => {
                if verdict == Verdict::Refused {
                    self.stats.refusals += 1;
                }
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.inbox.push_back(Mail::Verdict(verdict));
                }
            }
            HallAction::Reject(id, inbound, reason) => {
                panic!("the hall rejected {inbound:?} for {id}: {reason:?}");
            }
        }
    }

    /// Feeds one event to gathering `id` and carries out its actions like a
    /// host would, checking each. Returns the actions.
    fn drive(&mut self, id: &GatheringId, event: Event) -> Vec<Action> {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(id) else {
            return Vec::new();
        };
        slot.gathering.handle(event);
        let mut actions = Vec::new();
        while let Some(action) = slot.gathering.poll_action() {
            actions.push(action);
        }
        let generation = slot.generation;
        let phase = slot.gathering.phase();
        let last_activity = slot.last_activity;
        if phase == Phase::Live {
            let deadline = slot.gathering.next_deadline().map(|d| d.at);
            let idle = last_activity + self.config.idle_timeout;
            assert!(
                deadline.is_some_and(|d| d <= idle),
                "{id}: next deadline {deadline:?} is later than the idle duty {idle:?}"
            );
        }
        for action in &actions {
            self.on_action(id, generation, now, action);
        }
        actions
    }

    fn on_action(&mut self, id: &GatheringId, generation: u64, now: Instant, action: &Action) {
        match action {
            Action::Refused { .. } => {}
            Action::Send {
                conn,
                frame,
                delivery,
            } => self.on_send(id, *conn, frame, *delivery, now),
            Action::Close { conn, code, .. } => {
                if let Some(slot) = self.slots.get_mut(id)
                    && *code != CLOSE_DISPERSED
                    && *code != CLOSE_GOING_AWAY
                {
                    slot.remove_member(*conn, now);
                }
                let Some(c) = self.clients.get_mut(conn) else {
                    panic!("close for unknown {conn}");
                };
                if c.left {
                    return;
                }
                assert!(!c.closed, "{conn} closed twice");
                if *code == CLOSE_DISPERSED || *code == CLOSE_GOING_AWAY {
                    assert_eq!(
                        c.dispersed, 1,
                        "{conn} closed for dispersal without exactly one notice"
                    );
                }
                c.closed = true;
                c.close_code = Some(*code);
                c.unacked.clear();
                // The host's reader ends with the socket: the hall hears of it.
                self.hall_inbox
                    .push_back(HallEvent::Route(id.clone(), Inbound::Leave { conn: *conn }));
            }
            Action::Persist(commit) => {
                if self.writes.iter().any(|w| w.generation == generation) {
                    assert!(
                        self.config.overlap_commits,
                        "{id} asked for a second commit before the first was answered"
                    );
                    self.stats.overlapped_commits += 1;
                }
                self.writes.push_back(Write {
                    id: id.clone(),
                    generation,
                    commit: commit.clone(),
                });
            }
            Action::Disperse {
                reason, processed, ..
            } => {
                if let Some(slot) = self.slots.get(id)
                    && *reason == DisperseReason::Idle
                {
                    assert!(
                        now >= slot.last_activity + self.config.idle_timeout,
                        "{id} asked to disperse at {now:?}, before last activity {:?} + idle",
                        slot.last_activity
                    );
                }
                self.hall_inbox.push_back(HallEvent::DisperseRequest {
                    id: id.clone(),
                    processed: *processed,
                });
            }
            Action::Dispersed { reason } => {
                let Some(slot) = self.slots.remove(id) else {
                    return;
                };
                // Never disperses before its duty: checked again at the end,
                // because traffic that raced the request must have stopped it.
                match reason {
                    DisperseReason::Idle => assert!(
                        now >= slot.last_activity + self.config.idle_timeout,
                        "{id} dispersed for idleness at {now:?} after activity at {:?}",
                        slot.last_activity
                    ),
                    DisperseReason::Empty => {
                        let grace = self
                            .config
                            .empty_grace
                            .expect("empty dispersal needs a grace");
                        assert!(
                            slot.empty_since.is_some_and(|since| now >= since + grace),
                            "{id} dispersed as empty at {now:?}; empty since {:?}",
                            slot.empty_since
                        );
                    }
                    // The sim never evicts (no bound on live gatherings).
                    DisperseReason::Shutdown
                    | DisperseReason::StorageFailed
                    | DisperseReason::Evicted => {}
                }
                assert!(
                    slot.inbox.iter().all(|m| !matches!(m, Mail::Inbound(_))),
                    "{id} dispersed with messages unprocessed in its mailbox"
                );
                let closed = self
                    .clients
                    .iter()
                    .filter(|(c, _)| slot.members.contains(c));
                for (conn, c) in closed {
                    assert!(c.closed || c.left, "{id} dispersed without closing {conn}");
                }
                let stored = self.storage.get(id).map_or(0, Loaded::seq);
                assert_eq!(
                    stored,
                    slot.gathering.seq(),
                    "{id} dispersed before its final persist"
                );
                self.stats.dispersals += 1;
                self.hall_inbox.push_back(HallEvent::Dispersed(id.clone()));
            }
            Action::Bounce(inbound) => {
                self.hall_inbox
                    .push_back(HallEvent::Route(id.clone(), inbound.clone()));
            }
        }
    }

    fn on_send(
        &mut self,
        id: &GatheringId,
        conn: ConnId,
        frame: &Frame,
        delivery: Delivery,
        now: Instant,
    ) {
        let Some(c) = self.clients.get_mut(&conn) else {
            panic!("send to unknown {conn}");
        };
        if c.closed || c.left {
            // The host has no socket for it any more and drops the frame.
            return;
        }
        assert_eq!(
            frame.encoding(),
            c.encoding,
            "{conn} answered in the wrong encoding"
        );
        let msg = protocol::decode::<Server>(frame).expect("server frames decode");
        match msg {
            ServerMsg::Dispersed { .. } => {
                assert_eq!(
                    delivery,
                    Delivery::Once,
                    "dispersed notice must not be retried"
                );
                c.dispersed += 1;
                assert_eq!(c.dispersed, 1, "{conn} got a second dispersed notice");
            }
            ServerMsg::Forward { seq, .. } => {
                assert_eq!(delivery, Delivery::Retried);
                if seq <= c.acked_upto {
                    // A re-send that crossed our ack.
                    self.stats.resends += 1;
                } else if c.unacked.insert(seq, now).is_some() {
                    self.stats.resends += 1;
                }
                c.highest_forward = c.highest_forward.max(seq);
            }
            ServerMsg::Ack { id: request, .. } => {
                let Some((gid, name, valid)) = self.requests.get(&request) else {
                    panic!("ack for unknown request {request}");
                };
                assert!(*valid, "invalid op {request} was acknowledged");
                assert_eq!(gid, id);
                self.acked
                    .entry(id.clone())
                    .or_default()
                    .insert(name.clone());
            }
            ServerMsg::Error {
                id: Some(request),
                code,
                ..
            } => {
                if let Some((gid, name, valid)) = self.requests.get(&request) {
                    // Storage failed: the client is told the op is not
                    // durable, and no longer owed it (the fake store never
                    // keeps a failed write).
                    if code == NOT_DURABLE || code == STORAGE_FAILED {
                        if let Some(names) = self.sent_valid.get_mut(gid) {
                            names.remove(name);
                        }
                    } else {
                        assert!(!valid, "valid op {request} was refused: {code}");
                    }
                }
                self.stats.rejections += 1;
            }
            ServerMsg::Error { id: None, .. } | ServerMsg::State { .. } => {}
        }
    }

    /// No forward stays unacknowledged, without a re-send, for longer than
    /// the maximum retry interval while its gathering serves.
    fn check_retry_duty(&self) {
        for (conn, c) in &self.clients {
            let Some(slot) = self.slots.get(&c.gathering) else {
                continue;
            };
            if !matches!(slot.gathering.phase(), Phase::Live | Phase::Asking(_))
                || !slot.members.contains(conn)
                || c.closed
                || c.left
            {
                continue;
            }
            for (seq, sent) in &c.unacked {
                let waited = self.now.saturating_since(*sent);
                assert!(
                    waited <= self.config.max_retry_interval,
                    "{conn}: forward {seq} not re-sent for {waited:?}"
                );
            }
        }
    }
}
