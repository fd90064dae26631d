//! The real driver (`gathering-driver`) under a fake runtime: a fake clock,
//! in-memory storage whose loads and writes finish (or fail) only when the
//! test says, scripted clients, and a single-threaded executor run until
//! nothing can move after every step. The system's invariants are checked
//! as the driver acts and at the end.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_executor::{LocalPool, LocalSpawner};
use futures_util::task::LocalSpawnExt;
use gathering_core::protocol::{self, CLOSE_DISPERSED, CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    ClientMsg, Commit, Config, ConnId, Deadline, Delivery, DisperseReason, Duration, Encoding,
    Frame, Gathering, GatheringId, Inbound, Instant, Loaded, NOT_DURABLE, STORAGE_FAILED,
    ServerMsg,
};
use gathering_driver::{
    Conn, Durable, FailedWrites, GatheringLoop, HallMail, HallState, Loading, Observed, Runtime,
    hall_task,
};

type Server = ServerMsg<TournamentOp, Tournament>;

/// What the checker knows about one client.
#[derive(Debug, Default)]
pub struct Client {
    gathering: Option<GatheringId>,
    encoding: Encoding,
    /// Close code, once the server closed it.
    pub closed: Option<u16>,
    /// Whether it left by itself.
    pub left: bool,
    /// `dispersed` messages received.
    pub dispersed: u32,
    /// Highest forward seq received.
    pub highest_forward: u64,
}

/// Everything the fake runtime and the checker share.
pub struct World {
    now: Cell<Instant>,
    config: std::sync::Arc<Config>,
    hall: RefCell<HallState<Fake>>,
    mailbox: async_channel::Sender<HallMail<FakeConn>>,
    /// Traffic sent by clients and not yet in the hall's mailbox, oldest
    /// first: a step moves it on, or a timer that fires takes it to the
    /// hall at once, as a hall running on another thread may route just
    /// before the gathering acts on its deadline.
    /// Each mail says whether it counts as activity (a join, a frame that
    /// decodes), recorded when it reaches the hall.
    in_flight: RefCell<VecDeque<(HallMail<FakeConn>, bool)>>,
    /// Durable storage.
    pub store: RefCell<BTreeMap<GatheringId, Loaded>>,
    loads: RefCell<VecDeque<Loading<Fake>>>,
    writes: RefCell<VecDeque<(GatheringId, Commit, Durable<FakeConn>)>>,
    /// Gatherings a write failed for: none of their later commits is
    /// written (`Config::overlap_commits`).
    failed: RefCell<FailedWrites<FakeConn>>,
    timers: RefCell<Vec<(Instant, Waker)>>,
    spawner: LocalSpawner,
    /// Every client ever connected.
    pub clients: RefCell<BTreeMap<ConnId, Client>>,
    /// When a client last did something that counts as activity, per gathering.
    activity: RefCell<BTreeMap<GatheringId, Instant>>,
    /// Gatherings live (spawned, not yet dispersed).
    live: RefCell<BTreeSet<GatheringId>>,
    /// Per gathering, the time of its last idle dispersal request and the
    /// last activity routed to it before then.
    asked: RefCell<BTreeMap<GatheringId, (Instant, Instant)>>,
    /// Valid ops by request id: the gathering and the name registered.
    requests: RefCell<BTreeMap<u64, (GatheringId, String)>>,
    /// Valid ops acknowledged, by gathering.
    acked: RefCell<BTreeMap<GatheringId, BTreeSet<String>>>,
    /// Valid ops refused because storage failed (the client was told,
    /// so they are not owed), by gathering.
    withdrawn: RefCell<BTreeMap<GatheringId, BTreeSet<String>>>,
    /// Whether timers that fire take in-flight traffic to the hall.
    pub race: Cell<bool>,
    /// Counts, to see that the interesting paths were taken.
    pub stats: RefCell<Stats>,
}

/// How often the interesting things happened.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Idle or empty dispersals.
    pub dispersals: u64,
    /// Spawns of a gathering that had been persisted before.
    pub respawns: u64,
    /// Writes made to fail.
    pub failed_writes: u64,
    /// Writes answered as failed, unwritten, after an earlier one failed.
    pub unwritten_after_failure: u64,
    /// Acks received by clients.
    pub acks: u64,
}

impl World {
    /// Mail reaches the hall now: if it is activity, note when.
    fn reached_hall(&self, mail: &HallMail<FakeConn>, activity: bool) {
        if let (HallMail::Route(id, ..), true) = (mail, activity) {
            self.activity
                .borrow_mut()
                .insert(id.clone(), self.now.get());
        }
    }
}

/// The fake runtime: a handle to the [`World`].
#[derive(Clone)]
pub struct Fake(Rc<World>);

/// A client's connection as the driver writes to it.
pub struct FakeConn {
    conn: ConnId,
    world: Rc<World>,
}

impl Conn for FakeConn {
    fn send(&self, frame: Frame, _delivery: Delivery) -> bool {
        let w = &self.world;
        let mut clients = w.clients.borrow_mut();
        let Some(c) = clients.get_mut(&self.conn) else {
            return false;
        };
        if c.closed.is_some() || c.left {
            return false;
        }
        assert_eq!(frame.encoding(), c.encoding, "answered in another encoding");
        let msg: Server = protocol::decode(&frame).expect("the server's frames decode");
        let g = c.gathering.clone().expect("joined");
        let durable = w.store.borrow().get(&g).map_or(0, Loaded::seq);
        match msg {
            ServerMsg::Ack { id, seq } => {
                assert!(
                    seq <= durable,
                    "op {seq} of {g} acked before durable ({durable})"
                );
                w.stats.borrow_mut().acks += 1;
                if let Some((g, name)) = w.requests.borrow_mut().remove(&id) {
                    w.acked.borrow_mut().entry(g).or_default().insert(name);
                }
            }
            ServerMsg::Forward { seq, .. } => {
                assert!(seq <= durable, "op {seq} of {g} forwarded before durable");
                c.highest_forward = c.highest_forward.max(seq);
            }
            ServerMsg::Dispersed { .. } => {
                c.dispersed += 1;
                assert_eq!(c.dispersed, 1, "{} told twice", self.conn);
            }
            ServerMsg::Error {
                id: Some(id), code, ..
            } if code == NOT_DURABLE || code == STORAGE_FAILED => {
                if let Some((g, name)) = w.requests.borrow_mut().remove(&id) {
                    w.withdrawn.borrow_mut().entry(g).or_default().insert(name);
                }
            }
            ServerMsg::Error { .. } | ServerMsg::State { .. } => {}
        }
        true
    }

    fn close(&self, code: u16, _reason: &'static str) {
        let mut clients = self.world.clients.borrow_mut();
        let Some(c) = clients.get_mut(&self.conn) else {
            return;
        };
        assert!(c.closed.is_none(), "{} closed twice", self.conn);
        c.closed = Some(code);
        if code == CLOSE_DISPERSED {
            assert_eq!(c.dispersed, 1, "closed with 4000 without being told why");
        }
        if c.dispersed == 1 {
            assert!(
                matches!(code, CLOSE_DISPERSED | CLOSE_GOING_AWAY | CLOSE_INTERNAL),
                "{code}"
            );
        }
        // As a socket's task does once its socket is closed.
        if let Some(g) = c.gathering.clone() {
            let leave = Inbound::Leave { conn: self.conn };
            self.world
                .in_flight
                .borrow_mut()
                .push_back((HallMail::Route(g, leave, None), false));
        }
    }
}

/// One gathering's fake timer: the instant it is registered for.
#[derive(Default)]
pub struct FakeTimer(Option<Instant>);

impl Runtime for Fake {
    type App = Tournament;
    type Conn = FakeConn;
    type Timer = FakeTimer;
    type HallGuard<'a> = RefMut<'a, HallState<Fake>>;

    fn now(&self) -> Instant {
        self.0.now.get()
    }

    fn poll_timer(&self, timer: &mut FakeTimer, at: Deadline, cx: &mut Context<'_>) -> Poll<()> {
        if self.now() >= at.at {
            timer.0 = None;
            // Races: what clients sent reaches the hall now, while this
            // gathering is about to act on its deadline.
            if self.0.race.get() {
                let mail: Vec<_> = self.0.in_flight.borrow_mut().drain(..).collect();
                for (mail, activity) in mail {
                    self.0.reached_hall(&mail, activity);
                    self.hall().take(mail, self);
                }
            }
            return Poll::Ready(());
        }
        if timer.0 != Some(at.at) {
            timer.0 = Some(at.at);
            self.0.timers.borrow_mut().push((at.at, cx.waker().clone()));
        }
        Poll::Pending
    }

    fn config(&self) -> &std::sync::Arc<Config> {
        &self.0.config
    }

    fn hall(&self) -> RefMut<'_, HallState<Fake>> {
        self.0.hall.borrow_mut()
    }

    fn load(&self, loading: Loading<Fake>) {
        self.0.loads.borrow_mut().push_back(loading);
    }

    fn persist(&self, id: &GatheringId, commit: Commit, durable: Durable<FakeConn>) {
        self.0
            .writes
            .borrow_mut()
            .push_back((id.clone(), commit, durable));
    }

    fn spawn(&self, task: GatheringLoop<Fake>) {
        self.0
            .spawner
            .spawn_local(task.run())
            .expect("the executor runs");
    }

    fn observe(&self, what: Observed<'_>) {
        let w = &self.0;
        match what {
            Observed::Spawned { id, seq, .. } => {
                assert!(w.live.borrow_mut().insert(id.clone()), "{id} spawned twice");
                if seq > 0 {
                    w.stats.borrow_mut().respawns += 1;
                }
            }
            Observed::DisperseRequested {
                id,
                reason: DisperseReason::Idle,
                ..
            } => {
                let last = w
                    .activity
                    .borrow()
                    .get(id)
                    .copied()
                    .unwrap_or(Instant::ZERO);
                w.asked.borrow_mut().insert(id.clone(), (self.now(), last));
            }
            Observed::Dispersed {
                id, reason, late, ..
            } => {
                assert!(w.live.borrow_mut().remove(id));
                if reason == DisperseReason::Shutdown {
                    return;
                }
                w.stats.borrow_mut().dispersals += 1;
                // The fake timer wakes each task at its deadline exactly.
                assert_eq!(late, Duration::ZERO, "{id} dispersed late");
                // The request granted is the last one asked; the hall grants
                // only once everything routed before it was processed, so
                // the activity routed before it bounds the gathering's own.
                if reason == DisperseReason::Idle {
                    let asked = w.asked.borrow_mut().remove(id);
                    let (at, last) = asked.expect("an idle dispersal was asked for");
                    assert!(
                        at >= last + w.config.idle_timeout,
                        "{id} asked to disperse before its idle timeout"
                    );
                }
            }
            _ => {}
        }
    }
}

/// The simulated system around the real driver.
pub struct Driven {
    pool: LocalPool,
    /// The shared world.
    pub world: Rc<World>,
    next_conn: u64,
    next_request: u64,
    /// Valid ops sent, by gathering: the player names registered.
    pub sent_valid: BTreeMap<GatheringId, BTreeSet<String>>,
}

impl Driven {
    /// A host with no gatherings, its hall's task running.
    pub fn new(config: Config) -> Self {
        let pool = LocalPool::new();
        let (mailbox, rx) = async_channel::unbounded();
        let (hall, settled) = HallState::new();
        let world = Rc::new(World {
            now: Cell::new(Instant::from_millis(1_000)),
            config: config.into(),
            hall: RefCell::new(hall),
            mailbox,
            in_flight: RefCell::default(),
            store: RefCell::default(),
            loads: RefCell::default(),
            writes: RefCell::default(),
            failed: RefCell::default(),
            timers: RefCell::default(),
            spawner: pool.spawner(),
            clients: RefCell::default(),
            activity: RefCell::default(),
            live: RefCell::default(),
            asked: RefCell::default(),
            requests: RefCell::default(),
            acked: RefCell::default(),
            withdrawn: RefCell::default(),
            race: Cell::new(false),
            stats: RefCell::default(),
        });
        let rt = Fake(world.clone());
        pool.spawner()
            .spawn_local(hall_task(rt, rx, settled))
            .expect("the executor runs");
        let mut driven = Driven {
            pool,
            world,
            next_conn: 0,
            next_request: 0,
            sent_valid: BTreeMap::new(),
        };
        driven.run();
        driven
    }

    /// Runs every task until none can move.
    pub fn run(&mut self) {
        self.pool.run_until_stalled();
    }

    /// Sends traffic towards the hall; `activity` says whether the core
    /// counts it as such (joins and frames that decode do).
    fn route(&mut self, id: &GatheringId, inbound: Inbound, conn: Option<FakeConn>) {
        self.route_as(id, inbound, conn, true);
    }

    fn route_as(
        &mut self,
        id: &GatheringId,
        inbound: Inbound,
        conn: Option<FakeConn>,
        activity: bool,
    ) {
        let activity = activity && !matches!(inbound, Inbound::Leave { .. });
        let mail = HallMail::Route(id.clone(), inbound, conn);
        self.world
            .in_flight
            .borrow_mut()
            .push_back((mail, activity));
    }

    /// The oldest traffic in flight reaches the hall's mailbox. Returns
    /// whether there was some.
    pub fn step_hall(&mut self) -> bool {
        let Some((mail, activity)) = self.world.in_flight.borrow_mut().pop_front() else {
            return false;
        };
        self.world.reached_hall(&mail, activity);
        // After a shutdown the hall's mailbox is closed: a connection's send
        // then fails, as it does on a server.
        let _ = self.world.mailbox.try_send(mail);
        self.run();
        true
    }

    /// Clients that can still send.
    pub fn open_clients(&self) -> Vec<ConnId> {
        self.world
            .clients
            .borrow()
            .iter()
            .filter(|(_, c)| c.closed.is_none() && !c.left)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A new client joins `id`.
    pub fn join(&mut self, id: &GatheringId, encoding: Encoding) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.world.clients.borrow_mut().insert(
            conn,
            Client {
                gathering: Some(id.clone()),
                encoding,
                ..Client::default()
            },
        );
        let handle = FakeConn {
            conn,
            world: self.world.clone(),
        };
        self.route(id, Inbound::open_join(conn, encoding), Some(handle));
    }

    fn client(&self, conn: ConnId) -> Option<(GatheringId, Encoding)> {
        let clients = self.world.clients.borrow();
        let c = clients.get(&conn)?;
        if c.closed.is_some() || c.left {
            return None;
        }
        Some((c.gathering.clone()?, c.encoding))
    }

    fn send(&mut self, conn: ConnId, msg: &ClientMsg<TournamentOp>) {
        let Some((id, encoding)) = self.client(conn) else {
            return;
        };
        let frame = protocol::encode(msg, encoding).expect("client messages encode");
        self.route(&id, Inbound::open_frame(conn, frame), None);
    }

    /// Client `conn` leaves.
    pub fn leave(&mut self, conn: ConnId) {
        let Some((id, _)) = self.client(conn) else {
            return;
        };
        if let Some(c) = self.world.clients.borrow_mut().get_mut(&conn) {
            c.left = true;
        }
        self.route(&id, Inbound::Leave { conn }, None);
    }

    /// Client `conn` registers a player: a fresh name when `valid`, else
    /// one the tournament refuses.
    pub fn op(&mut self, conn: ConnId, valid: bool) {
        let Some((id, _)) = self.client(conn) else {
            return;
        };
        self.next_request += 1;
        let name = if valid {
            format!("p{}", self.next_request)
        } else {
            String::new()
        };
        if valid {
            self.sent_valid.entry(id).or_default().insert(name.clone());
        }
        let op = TournamentOp::RegisterPlayer { name };
        let id = self.next_request;
        self.send(conn, &ClientMsg::Op { id, op });
    }

    /// Client `conn` fetches the state.
    pub fn fetch(&mut self, conn: ConnId) {
        self.next_request += 1;
        let id = self.next_request;
        self.send(conn, &ClientMsg::Fetch { id });
    }

    /// Client `conn` acknowledges every forward it has seen.
    pub fn ack(&mut self, conn: ConnId) {
        let seq = self
            .world
            .clients
            .borrow()
            .get(&conn)
            .map_or(0, |c| c.highest_forward);
        if seq > 0 {
            self.send(conn, &ClientMsg::Ack { seq });
        }
    }

    /// Client `conn` sends bytes that are no message (not activity).
    pub fn garbage(&mut self, conn: ConnId) {
        let Some((id, encoding)) = self.client(conn) else {
            return;
        };
        let frame = match encoding {
            Encoding::Json => Frame::Text("{\"type\":\"op\"".into()),
            Encoding::Postcard => Frame::Binary(vec![7, 7, 7].into()),
        };
        self.route_as(&id, Inbound::open_frame(conn, frame), None, false);
    }

    /// The oldest pending load finishes. Returns whether there was one.
    pub fn step_load(&mut self) -> bool {
        let Some(loading) = self.world.loads.borrow_mut().pop_front() else {
            return false;
        };
        let stored = self.world.store.borrow().get(loading.id()).cloned();
        loading.finish(Ok(stored.unwrap_or_default()));
        self.run();
        true
    }

    /// The oldest pending write finishes, or fails. Returns whether there
    /// was one.
    pub fn step_write(&mut self, fail: bool) -> bool {
        let Some((id, commit, durable)) = self.world.writes.borrow_mut().pop_front() else {
            return false;
        };
        let mut failed = self.world.failed.borrow_mut();
        if failed.follows_failure(&durable) {
            self.world.stats.borrow_mut().unwritten_after_failure += 1;
            failed.fail(durable, "an earlier write failed".into());
        } else if fail {
            self.world.stats.borrow_mut().failed_writes += 1;
            failed.fail(durable, "injected failure".into());
        } else {
            let mut store = self.world.store.borrow_mut();
            let kept = store.entry(id.clone()).or_default();
            assert!(commit.seq >= kept.seq(), "storage of {id} went backwards");
            assert_eq!(durable.seq(), commit.seq);
            if commit.snapshot.is_some() {
                assert!(
                    commit.log.is_empty(),
                    "a snapshot commit carries log entries"
                );
            } else {
                // Log entries continue the log exactly.
                for (next, entry) in (kept.seq() + 1..).zip(&commit.log) {
                    assert_eq!(entry.seq, next, "the log of {id} skips or repeats");
                }
            }
            kept.apply(commit);
            drop(store);
            durable.report(Ok(()));
        }
        drop(failed);
        self.run();
        true
    }

    /// Moves the clock forward by `by`, waking each timer exactly at its
    /// instant on the way; bounded.
    pub fn advance(&mut self, by: Duration) {
        let target = self.world.now.get() + by;
        for _ in 0..10_000 {
            let next = self.world.timers.borrow().iter().map(|(at, _)| *at).min();
            match next {
                Some(at) if at <= target => {
                    let now = self.world.now.get().max(at);
                    self.world.now.set(now);
                    let due: Vec<Waker> = {
                        let mut timers = self.world.timers.borrow_mut();
                        let (due, rest) = timers.drain(..).partition(|(at, _)| *at <= now);
                        *timers = rest;
                        due.into_iter().map(|(_, w)| w).collect()
                    };
                    due.into_iter().for_each(Waker::wake);
                    self.run();
                }
                _ => break,
            }
        }
        self.world.now.set(self.world.now.get().max(target));
        self.run();
    }

    /// Finishes every load and write, then lets time run until every
    /// gathering has dispersed; bounded.
    pub fn run_until_all_dispersed(&mut self) {
        for _ in 0..10_000 {
            while self.step_hall() || self.step_load() || self.step_write(false) {}
            if self.world.live.borrow().is_empty() && self.world.hall.borrow().live() == 0 {
                return;
            }
            let next = self.world.timers.borrow().iter().map(|(at, _)| *at).min();
            match next {
                Some(at) => {
                    let by = at.saturating_since(self.world.now.get());
                    self.advance(by);
                }
                None => panic!("gatherings remain but none has a timer armed"),
            }
        }
        panic!("gatherings never all dispersed");
    }

    /// Shuts the host down and checks that everything ended: the hall's
    /// task finished, every client of a gathering was told and closed.
    pub fn shutdown(&mut self) {
        while self.step_hall() {}
        assert!(self.world.mailbox.try_send(HallMail::Shutdown).is_ok());
        self.run();
        for _ in 0..10_000 {
            while self.step_hall() || self.step_load() || self.step_write(false) {}
            if self.world.hall.borrow().finished() {
                break;
            }
            // A write that failed before is retried after its interval.
            let next = self.world.timers.borrow().iter().map(|(at, _)| *at).min();
            match next {
                Some(at) => {
                    let by = at.saturating_since(self.world.now.get());
                    self.advance(by);
                }
                None => break,
            }
        }
        assert!(
            self.world.hall.borrow().finished(),
            "shutdown never completed"
        );
        assert!(self.world.live.borrow().is_empty());
        assert!(
            self.world.mailbox.is_closed(),
            "the hall's task did not end"
        );
    }

    /// Nothing was lost: every valid op acknowledged is in the stored
    /// state, and so is every valid op sent when the run ended in
    /// dispersal (a shutdown turns away, unacknowledged, what waits for a
    /// gathering still loading or dispersing).
    pub fn check_final(&self, shut_down: bool) {
        let store = self.world.store.borrow();
        let acked = self.world.acked.borrow();
        // A failed write undoes the ops it carried: their senders are told
        // (and those who left hear nothing, as with any op not yet acked),
        // so only what was acknowledged is owed.
        let failed = self.world.stats.borrow().failed_writes > 0;
        let must = if shut_down || failed {
            &*acked
        } else {
            &self.sent_valid
        };
        let withdrawn = self.world.withdrawn.borrow();
        // An op refused as not durable was not applied.
        for (id, names) in withdrawn.iter() {
            let Some(stored) = store.get(id) else {
                continue;
            };
            let config = self.world.config.clone();
            let restored =
                Gathering::<Tournament>::restore(id.clone(), config, Instant::ZERO, stored)
                    .expect("what was stored restores");
            for name in names {
                assert!(
                    !restored.app().players.contains_key(name),
                    "op registering {name} in {id} was refused as not durable, yet stored"
                );
            }
        }
        for (id, names) in must {
            let names: Vec<&String> = names
                .iter()
                .filter(|n| !withdrawn.get(id).is_some_and(|w| w.contains(*n)))
                .collect();
            if names.is_empty() {
                continue;
            }
            let stored = store
                .get(id)
                .expect("a gathering that took ops was persisted");
            let config = self.world.config.clone();
            let restored =
                Gathering::<Tournament>::restore(id.clone(), config, Instant::ZERO, stored)
                    .expect("what was stored restores");
            let state = restored.app();
            for name in names {
                assert!(
                    state.players.contains_key(name),
                    "op registering {name} in {id} was lost"
                );
            }
        }
        for (conn, c) in self.world.clients.borrow().iter() {
            assert!(c.dispersed <= 1, "{conn} told {} times", c.dispersed);
        }
    }
}
