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
    Action, ClientMsg, Commit, Config, ConnId, DisperseReason, Duration, Event, Gathering,
    GatheringId, Hall, HallAction, HallEvent, Inbound, Instant, Loaded, Phase, ServerMsg, Verdict,
};

use crate::Counts;
use crate::clients::{ClientStep, Clients, Sent, Server};
use crate::harness::Harness;

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
    /// The clients, what they sent and what they were told.
    pub clients: Clients,
    spawned: BTreeSet<GatheringId>,
    /// Counts, for tests that want to see the interesting paths were taken.
    pub stats: Counts,
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
            clients: Clients::default(),
            spawned: BTreeSet::new(),
            stats: Counts::default(),
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
        self.clients.open()
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
                    Inbound::Leave { conn, .. } => slot.remove_member(*conn, now),
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

    /// The earliest deadline of any gathering.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.gathering.next_deadline())
            .map(|d| d.at)
            .min()
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
            while self.step_store(false) {
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

    /// Invariants that hold once everything has dispersed: nothing was lost
    /// (a failed write undoes the ops it carried, and its senders are told:
    /// then only what was acknowledged is owed).
    pub fn check_final(&self) {
        let stored = self
            .storage
            .keys()
            .map(|id| (id.clone(), self.stored_state(id)))
            .collect();
        self.clients
            .check_final(self.stats.get("failed_writes") > 0, &stored);
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
                if let Some(acked) = self.clients.acked.get(&id) {
                    for name in acked {
                        assert!(
                            gathering.app().players.contains_key(name),
                            "acked op {name} missing from the state {id} respawned with"
                        );
                    }
                }
                if !self.spawned.insert(id.clone()) {
                    self.stats.bump("respawns");
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
                    self.stats.bump("refusals");
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
                // The host's reader ends with the socket: the hall hears of it.
                if let Some(gathering) = self.clients.closed(*conn, *code) {
                    self.hall_inbox.push_back(HallEvent::Route(
                        gathering,
                        Inbound::Leave {
                            conn: *conn,
                            clean: false,
                        },
                    ));
                }
            }
            Action::Persist(commit) => {
                if self.writes.iter().any(|w| w.generation == generation) {
                    assert!(
                        self.config.overlap_commits,
                        "{id} asked for a second commit before the first was answered"
                    );
                    self.stats.bump("overlapped_commits");
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
                    // The sim never evicts (no bound on live gatherings)
                    // nor hands off (no cluster).
                    DisperseReason::Shutdown
                    | DisperseReason::StorageFailed
                    | DisperseReason::Evicted
                    | DisperseReason::Moved => {}
                }
                assert!(
                    slot.inbox.iter().all(|m| !matches!(m, Mail::Inbound(_))),
                    "{id} dispersed with messages unprocessed in its mailbox"
                );
                let closed = self
                    .clients
                    .clients
                    .iter()
                    .filter(|(c, _)| slot.members.contains(c));
                for (conn, c) in closed {
                    assert!(!c.is_open(), "{id} dispersed without closing {conn}");
                }
                let stored = self.storage.get(id).map_or(0, Loaded::seq);
                assert_eq!(
                    stored,
                    slot.gathering.seq(),
                    "{id} dispersed before its final persist"
                );
                self.stats.bump("dispersals");
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
        frame: &gathering_core::Frame,
        delivery: gathering_core::Delivery,
        now: Instant,
    ) {
        let durable = self.storage.get(id).map_or(0, Loaded::seq);
        self.clients.receive(conn, frame, delivery, now, durable);
    }

    /// No forward stays unacknowledged, without a re-send, for longer than
    /// the maximum retry interval while its gathering serves.
    fn check_retry_duty(&self) {
        for (conn, c) in &self.clients.clients {
            let Some(slot) = self.slots.get(&c.gathering) else {
                continue;
            };
            if !matches!(slot.gathering.phase(), Phase::Live | Phase::Asking(_))
                || !slot.members.contains(conn)
                || !c.is_open()
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

impl Harness for Sim {
    fn play(&mut self, step: &ClientStep, ids: &[GatheringId]) {
        if let Some(Sent {
            gathering, inbound, ..
        }) = step.play(&mut self.clients, ids)
        {
            self.hall_inbox
                .push_back(HallEvent::Route(gathering, inbound));
        }
    }
    fn step_hall(&mut self) -> bool {
        let Some(event) = self.hall_inbox.pop_front() else {
            return false;
        };
        self.hall.handle(event);
        while let Some(action) = self.hall.poll_action() {
            self.on_hall_action(action);
        }
        true
    }
    fn step_store(&mut self, fail: bool) -> bool {
        let Some(write) = self.writes.pop_front() else {
            return false;
        };
        // After a failed write, the host answers the gathering's later
        // commits as failed without writing them; the gathering may have
        // dispersed meanwhile (nothing it holds is durable any more).
        if self.failed_generations.contains(&write.generation) {
            self.stats.bump("unwritten_after_failure");
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
            self.stats.bump("failed_writes");
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
    fn advance(&mut self, by: Duration) {
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
}
