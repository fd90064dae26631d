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
use gathering_core::tournament::Tournament;
use gathering_core::{
    Commit, Config, ConnId, Deadline, Delivery, DisperseReason, Duration, Frame, Gathering,
    GatheringId, Inbound, Instant, Loaded,
};
use gathering_driver::{
    Conn, Durable, FailedWrites, GatheringLoop, HallMail, HallState, Loading, Observed, Runtime,
    hall_task,
};

use crate::Counts;
use crate::clients::{ClientStep, Clients, Sent};
use crate::harness::Harness;

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
    /// The clients, what they sent and what they were told.
    pub clients: RefCell<Clients>,
    /// When a client last did something that counts as activity, per gathering.
    activity: RefCell<BTreeMap<GatheringId, Instant>>,
    /// Gatherings live (spawned, not yet dispersed).
    live: RefCell<BTreeSet<GatheringId>>,
    /// Per gathering, the time of its last idle dispersal request and the
    /// last activity routed to it before then.
    asked: RefCell<BTreeMap<GatheringId, (Instant, Instant)>>,
    /// Whether timers that fire take in-flight traffic to the hall.
    pub race: Cell<bool>,
    /// Counts, to see that the interesting paths were taken.
    pub stats: RefCell<Counts>,
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
    fn send(&self, frame: Frame, delivery: Delivery) -> bool {
        let w = &self.world;
        let mut clients = w.clients.borrow_mut();
        let Some(g) = clients.clients.get(&self.conn).map(|c| c.gathering.clone()) else {
            return false;
        };
        let durable = w.store.borrow().get(&g).map_or(0, Loaded::seq);
        clients.receive(self.conn, &frame, delivery, w.now.get(), durable)
    }

    fn close(&self, code: u16, _reason: &'static str) {
        let closed = self.world.clients.borrow_mut().closed(self.conn, code);
        // As a socket's task does once its socket is closed.
        if let Some(g) = closed {
            let leave = Inbound::Leave {
                conn: self.conn,
                clean: false,
            };
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
                    w.stats.borrow_mut().bump("respawns");
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
                w.stats.borrow_mut().bump("dispersals");
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
            race: Cell::new(false),
            stats: RefCell::default(),
        });
        let rt = Fake(world.clone());
        pool.spawner()
            .spawn_local(hall_task(rt, rx, settled))
            .expect("the executor runs");
        let mut driven = Driven { pool, world };
        driven.run();
        driven
    }

    /// Runs every task until none can move.
    pub fn run(&mut self) {
        self.pool.run_until_stalled();
    }

    /// Clients that can still send.
    pub fn open_clients(&self) -> Vec<ConnId> {
        self.world.clients.borrow().open()
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

    /// Finishes every load and write, then lets time run until every
    /// gathering has dispersed; bounded.
    pub fn run_until_all_dispersed(&mut self) {
        for _ in 0..10_000 {
            while self.step_hall() || self.step_load() || self.step_store(false) {}
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
            while self.step_hall() || self.step_load() || self.step_store(false) {}
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

    /// Nothing was lost (see [`Clients::check_final`]): every valid op
    /// sent is stored when the run ended in dispersal; after a shutdown
    /// (which turns away, unacknowledged, what waits for a gathering still
    /// loading or dispersing) or a failed write, every one acknowledged.
    pub fn check_final(&self, shut_down: bool) {
        let config = self.world.config.clone();
        let stored = self
            .world
            .store
            .borrow()
            .iter()
            .map(|(id, loaded)| {
                let restored = Gathering::<Tournament>::restore(
                    id.clone(),
                    config.clone(),
                    Instant::ZERO,
                    loaded,
                )
                .expect("what was stored restores");
                (id.clone(), restored.app().clone())
            })
            .collect();
        let failed = self.world.stats.borrow().get("failed_writes") > 0;
        self.world
            .clients
            .borrow()
            .check_final(shut_down || failed, &stored);
    }
}

impl Harness for Driven {
    fn play(&mut self, step: &ClientStep, ids: &[GatheringId]) {
        let sent = step.play(&mut self.world.clients.borrow_mut(), ids);
        let Some(Sent {
            gathering,
            inbound,
            activity,
        }) = sent
        else {
            return;
        };
        let handle = match inbound {
            Inbound::Join { conn, .. } => Some(FakeConn {
                conn,
                world: self.world.clone(),
            }),
            _ => None,
        };
        let mail = HallMail::Route(gathering, inbound, handle);
        self.world
            .in_flight
            .borrow_mut()
            .push_back((mail, activity));
    }
    fn step_hall(&mut self) -> bool {
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
    fn step_store(&mut self, fail: bool) -> bool {
        let Some((id, commit, durable)) = self.world.writes.borrow_mut().pop_front() else {
            return false;
        };
        let mut failed = self.world.failed.borrow_mut();
        if failed.follows_failure(&durable) {
            self.world
                .stats
                .borrow_mut()
                .bump("unwritten_after_failure");
            failed.fail(durable, "an earlier write failed".into());
        } else if fail {
            self.world.stats.borrow_mut().bump("failed_writes");
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
    fn advance(&mut self, by: Duration) {
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
}
