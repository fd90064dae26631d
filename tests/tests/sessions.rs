//! Sessions on a fake clock: `welcome`, exactly-once ops across reconnects,
//! restarts and failed commits, resume from a seq (or a `resync`), the
//! session's owner, one connection per session, and acks before a close at
//! a limit. Scenarios first, then a property over random schedules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gathering_core::protocol::{self, CLOSE_FORBIDDEN, CLOSE_POLICY, CLOSE_SESSION_MOVED};
use gathering_core::{
    Action, App, ClientMsg, Commit, Config, ConnId, Duration, Encoding, Event, Gathering,
    GatheringId, Inbound, Instant, Loaded, Member, Phase, Rejection, ServerMsg, SessionId,
    SessionJoin, Verdict, wire_enum,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

wire_enum! {
    /// An op that carries the tag its client gave it.
    #[derive(Clone, Debug, PartialEq)]
    pub enum TagOp {
        Tag { tag: u64 },
        /// Refused by the app.
        Bad { tag: u64 },
    }
}

/// Every tag applied, in order, with who applied it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tags(Vec<(String, u64)>);

impl App for Tags {
    const NAME: &'static str = "tags";
    type Op = TagOp;
    type Presence = String;
    fn apply(&mut self, by: &Member, op: &TagOp) -> Result<(), Rejection> {
        match op {
            TagOp::Tag { tag } => {
                self.0.push((by.id.clone(), *tag));
                Ok(())
            }
            TagOp::Bad { .. } => Err(Rejection::new("bad", "refused by the app")),
        }
    }
}

type Server = ServerMsg<TagOp, Tags, String>;

const T0: Instant = Instant::from_millis(10_000);

/// One gathering with a memory store that writes commits when told to.
struct Room {
    g: Gathering<Tags>,
    store: Loaded,
    /// Commits handed out and not yet answered.
    pending: Vec<Commit>,
    now: Instant,
    config: Config,
    /// Everything each connection was sent, decoded, and how it closed.
    sent: BTreeMap<u64, Vec<Server>>,
    /// The presence messages each was sent.
    presence: BTreeMap<u64, Vec<Server>>,
    closed: BTreeMap<u64, u16>,
    epochs: u64,
}

fn id() -> GatheringId {
    GatheringId::parse("room").unwrap()
}

fn session(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

impl Room {
    fn new(config: Config) -> Self {
        let mut g = Gathering::new(id(), config.clone(), T0);
        g.offer_epoch(1000);
        Room {
            g,
            store: Loaded::default(),
            pending: Vec::new(),
            now: T0,
            config,
            sent: BTreeMap::new(),
            presence: BTreeMap::new(),
            closed: BTreeMap::new(),
            epochs: 1000,
        }
    }

    fn run(&mut self, event: Event) {
        self.g.handle(event);
        while let Some(action) = self.g.poll_action() {
            match action {
                Action::Send { conn, frame, .. } => {
                    let msg = protocol::decode::<Server>(&frame).unwrap();
                    // Presence is checked on its own.
                    let to = match msg {
                        ServerMsg::Presence { .. } | ServerMsg::PresenceDiff { .. } => {
                            &mut self.presence
                        }
                        _ => &mut self.sent,
                    };
                    to.entry(conn.0).or_default().push(msg);
                }
                Action::Close { conn, code, .. } => {
                    assert!(self.closed.insert(conn.0, code).is_none(), "closed twice");
                }
                Action::Persist(commit) => self.pending.push(commit),
                Action::Disperse { .. } => {
                    let at = self.now;
                    self.g.handle(Event::Verdict(at, Verdict::Granted));
                }
                _ => {}
            }
        }
    }

    fn join(&mut self, conn: u64, s: &str, since: Option<u64>, epoch: Option<u64>) {
        self.join_as(conn, s, since, epoch, None);
    }

    fn join_as(
        &mut self,
        conn: u64,
        s: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        member: Option<Member>,
    ) {
        let join = Inbound::Join {
            conn: ConnId(conn),
            encoding: Encoding::Json,
            member: member.map(Arc::new),
            session: Some(Box::new(SessionJoin {
                session: session(s),
                since,
                epoch,
            })),
        };
        self.run(Event::Message(self.now, join));
    }

    fn leave(&mut self, conn: u64) {
        self.leave_as(conn, false);
    }

    /// A leave; `clean` if the client closed with 1000.
    fn leave_as(&mut self, conn: u64, clean: bool) {
        let leave = Inbound::Leave {
            conn: ConnId(conn),
            clean,
        };
        self.run(Event::Message(self.now, leave));
    }

    /// The clock moves on by `ms`, ticking at every deadline on the way.
    fn wait(&mut self, ms: u64) {
        let end = self.now + Duration::from_millis(ms);
        for _ in 0..1000 {
            let Some(d) = self.g.next_deadline().filter(|d| d.at <= end) else {
                break;
            };
            self.now = d.at.max(self.now);
            self.run(Event::Tick(self.now));
        }
        self.now = end;
        self.run(Event::Tick(end));
    }

    fn send(&mut self, conn: u64, msg: ClientMsg<TagOp, String>) {
        let frame = protocol::encode(&msg, Encoding::Json).unwrap();
        let inbound = Inbound::Frame {
            conn: ConnId(conn),
            frame,
            member: None,
            session: None,
        };
        self.run(Event::Message(self.now, inbound));
    }

    fn op(&mut self, conn: u64, id: u64, tag: u64) {
        self.send(
            conn,
            ClientMsg::Op {
                id,
                op: TagOp::Tag { tag },
            },
        );
    }

    /// Writes every pending commit.
    fn persist(&mut self) {
        while !self.pending.is_empty() {
            for commit in std::mem::take(&mut self.pending) {
                let seq = commit.seq;
                self.store.apply(commit);
                self.run(Event::Persisted(self.now, seq));
            }
        }
    }

    /// Fails the oldest pending commit.
    fn fail(&mut self) {
        self.pending.clear();
        self.run(Event::PersistFailed(self.now));
    }

    /// A restart: what the store holds is loaded again (a kill -9 loses
    /// the pending commits).
    fn restart(&mut self) {
        self.pending.clear();
        self.g = Gathering::restore(id(), self.config.clone(), self.now, &self.store).unwrap();
        self.epochs += 1;
        self.g.offer_epoch(self.epochs);
    }

    fn take(&mut self, conn: u64) -> Vec<Server> {
        self.sent.remove(&conn).unwrap_or_default()
    }
}

fn welcome(msgs: &[Server]) -> (String, u64, u64, Option<u64>) {
    match msgs.first() {
        Some(ServerMsg::Welcome {
            member,
            epoch,
            seq,
            last_op,
        }) => (member.clone(), *epoch, *seq, *last_op),
        other => panic!("the first message is not a welcome: {other:?}"),
    }
}

fn acks(msgs: &[Server]) -> Vec<(u64, u64)> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Ack { id, seq } => Some((*id, *seq)),
            _ => None,
        })
        .collect()
}

fn forwards(msgs: &[Server]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Forward { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn errors(msgs: &[Server]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Error { code, .. } => Some(code.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_is_welcomed_and_an_op_retried_anywhere_applies_once() {
    let mut room = Room::new(Config::default());
    room.join(1, "tab-a", None, None);
    assert_eq!(welcome(&room.take(1)), ("tab-a".into(), 1000, 0, None));
    room.op(1, 1, 10);
    // The connection drops before its ack; the retry comes on another,
    // while the first commit is still being written: acked once durable.
    room.leave(1);
    room.join(2, "tab-a", None, None);
    assert_eq!(welcome(&room.take(2)), ("tab-a".into(), 1000, 0, Some(1)));
    room.op(2, 1, 10);
    assert!(acks(&room.take(2)).is_empty(), "acked before durable");
    room.persist();
    assert_eq!(acks(&room.take(2)), [(1, 1)]);
    // Retried again after a restart, and after a snapshot: the same seq.
    room.op(2, 2, 20);
    room.persist();
    room.restart();
    room.join(3, "tab-a", None, None);
    assert_eq!(welcome(&room.take(3)).3, Some(2));
    room.op(3, 1, 10);
    room.op(3, 2, 20);
    assert_eq!(acks(&room.take(3)), [(1, 1), (2, 2)]);
    assert_eq!(room.g.app().0, [("tab-a".into(), 10), ("tab-a".into(), 20)]);
    // A refused op was never applied: sent again, it is evaluated again.
    room.send(
        3,
        ClientMsg::Op {
            id: 3,
            op: TagOp::Bad { tag: 30 },
        },
    );
    room.send(
        3,
        ClientMsg::Op {
            id: 3,
            op: TagOp::Bad { tag: 30 },
        },
    );
    assert_eq!(errors(&room.take(3)), ["bad", "bad"]);
    // Ids below the highest applied and not remembered are stale.
    room.op(3, 4, 40);
    room.op(3, 3, 30);
    room.persist();
    let msgs = room.take(3);
    assert_eq!(acks(&msgs), [(4, 3)]);
    assert_eq!(errors(&msgs), [protocol::STALE_OP]);
    // The epoch is the same across the restart: it was in a snapshot.
    assert_eq!(room.g.epoch(), 1000);
}

#[test]
fn a_session_belongs_to_its_first_member_and_to_one_connection() {
    let mut room = Room::new(Config::default());
    let ada = || Some(Member::new("Ada", "player"));
    room.join_as(1, "s1", None, None, ada());
    assert_eq!(welcome(&room.take(1)).0, "Ada");
    room.join_as(2, "s1", None, None, Some(Member::new("Bob", "player")));
    assert_eq!(errors(&room.take(2)), [protocol::SESSION_TAKEN]);
    assert_eq!(room.closed.get(&2), Some(&CLOSE_FORBIDDEN));
    // The same member again: the older connection is closed, once.
    room.join_as(3, "s1", None, None, ada());
    assert_eq!(room.closed.get(&1), Some(&CLOSE_SESSION_MOVED));
    assert_eq!(welcome(&room.take(3)).0, "Ada");
    assert_eq!(room.g.connections(), 1);
}

#[test]
fn a_resume_gets_the_missed_ops_in_order_or_a_resync() {
    let config = Config {
        resume_ops: 8,
        ..Config::default()
    };
    let mut room = Room::new(config);
    room.join(1, "writer", None, None);
    room.join(2, "reader", None, None);
    let epoch = welcome(&room.take(2)).1;
    for i in 1..=5 {
        room.op(1, i, i);
    }
    room.persist();
    assert_eq!(forwards(&room.take(2)), [1, 2, 3, 4, 5]);
    room.leave(2);
    for i in 6..=10 {
        room.op(1, i, i);
    }
    room.persist();
    // One more is under way while the reader comes back.
    room.op(1, 11, 11);
    room.join(3, "reader", Some(5), Some(epoch));
    let msgs = room.take(3);
    assert_eq!(welcome(&msgs).2, 10);
    assert_eq!(forwards(&msgs), [6, 7, 8, 9, 10]);
    room.persist();
    assert_eq!(
        forwards(&room.take(3)),
        [11],
        "then live, no gap, no duplicate"
    );

    // Too far back for what is kept, another epoch, or a seq beyond the
    // gathering's: the whole state.
    for (since, epoch) in [(1, epoch), (5, epoch + 1), (99, epoch)] {
        room.join(4, "late", Some(since), Some(epoch));
        let msgs = room.take(4);
        assert!(
            matches!(
                msgs[..],
                [ServerMsg::Welcome { .. }, ServerMsg::Resync { seq: 11, .. }]
            ),
            "{msgs:?}"
        );
    }
    // A resync while an op is under way: its state holds the op, so it
    // is sent once that op is durable (a crash could take it back), and
    // the op's forward is not sent after it.
    room.op(1, 12, 12);
    room.join(5, "later", Some(0), Some(epoch + 7));
    assert_eq!(welcome(&room.take(5)).2, 11);
    room.persist();
    let msgs = room.take(5);
    let [ServerMsg::Resync { seq: 12, state }] = &msgs[..] else {
        panic!("{msgs:?}");
    };
    assert_eq!(state.0.len(), 12);
    room.op(1, 13, 13);
    room.persist();
    assert_eq!(forwards(&room.take(5)), [13]);
}

#[test]
fn a_resume_after_a_restart_is_served_from_the_log() {
    let mut room = Room::new(Config::default());
    room.join(1, "writer", None, None);
    let epoch = welcome(&room.take(1)).1;
    for i in 1..=6 {
        room.op(1, i, i);
        room.persist();
    }
    room.restart();
    room.join(2, "reader", Some(2), Some(epoch));
    let msgs = room.take(2);
    assert_eq!(welcome(&msgs).1, epoch);
    assert_eq!(forwards(&msgs), [3, 4, 5, 6]);
}

#[test]
fn a_connection_closed_at_a_limit_gets_its_acks_first() {
    let config = Config {
        max_ops_per_sec: 10,
        op_burst: 2,
        ..Config::default()
    };
    for session in [true, false] {
        let mut room = Room::new(config.clone());
        if session {
            room.join(1, "fast", None, None);
        } else {
            room.run(Event::Message(
                T0,
                Inbound::open_join(ConnId(1), Encoding::Json),
            ));
        }
        for i in 1..=10 {
            room.op(1, i, i);
        }
        // Two accepted, the rest refused; the flood close waits for the
        // commit of the two, and nothing the client sends meanwhile is
        // applied.
        assert!(room.closed.is_empty(), "closed before its acks");
        room.op(1, 11, 11);
        assert_eq!(room.g.seq(), 2);
        room.persist();
        assert_eq!(room.closed.get(&1), Some(&CLOSE_POLICY));
        let msgs = room.take(1);
        assert_eq!(acks(&msgs), [(1, 1), (2, 2)]);
    }
}

#[test]
fn old_clients_see_no_session_message() {
    let mut room = Room::new(Config {
        snapshot_ops: 1,
        ..Config::default()
    });
    room.run(Event::Message(
        T0,
        Inbound::open_join(ConnId(1), Encoding::Json),
    ));
    room.op(1, 1, 1);
    room.persist();
    assert_eq!(room.take(1), [ServerMsg::Ack { id: 1, seq: 1 }]);
    // Its snapshot is the state alone, as before sessions existed.
    let snapshot = room.store.snapshot.as_ref().unwrap();
    assert_eq!(snapshot.bytes, postcard::to_allocvec(room.g.app()).unwrap());
}

/// What a client knows of who is here: the whole map, then each diff.
fn view(
    msgs: &[Server],
    mut seen: BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Option<String>> {
    for msg in msgs {
        match msg {
            ServerMsg::Presence { members } => seen = members.clone(),
            ServerMsg::PresenceDiff { joins, leaves } => {
                for m in leaves {
                    seen.remove(m);
                }
                seen.extend(joins.clone());
            }
            other => panic!("{other:?} among presence messages"),
        }
    }
    seen
}

fn diffs(msgs: &[Server]) -> usize {
    msgs.iter()
        .filter(|m| matches!(m, ServerMsg::PresenceDiff { .. }))
        .count()
}

#[test]
fn presence_is_shown_coalesced_and_cleared() {
    let mut room = Room::new(Config::default());
    let ada = || Some(Member::new("Ada", "player"));
    let bob = || Some(Member::new("Bob", "player"));
    room.join_as(1, "a", None, None, ada());
    room.join_as(2, "b", None, None, bob());
    room.wait(60);
    let mut seen_by_ada = view(&room.presence.remove(&1).unwrap(), BTreeMap::new());
    let seen_by_bob = view(&room.presence.remove(&2).unwrap(), BTreeMap::new());
    let both = BTreeMap::from([("Ada".to_string(), None), ("Bob".to_string(), None)]);
    assert_eq!((&seen_by_ada, &seen_by_bob), (&both, &both));

    // Ten updates within 50 ms: one diff, the latest data; not activity.
    let idle = room.g.idle_deadline();
    for i in 0..10 {
        room.send(
            2,
            ClientMsg::Presence {
                data: format!("typing {i}"),
            },
        );
        room.wait(4);
    }
    room.wait(60);
    assert_eq!(
        room.g.idle_deadline(),
        idle,
        "presence kept the gathering alive"
    );
    let msgs = room.presence.remove(&1).unwrap();
    assert!(diffs(&msgs) <= 2, "{msgs:?}");
    seen_by_ada = view(&msgs, seen_by_ada);
    assert_eq!(seen_by_ada["Bob"], Some("typing 9".into()));

    // Lost without a close: held for the grace; back within it, no leave
    // and no join.
    room.leave(2);
    room.wait(5_000);
    room.join_as(3, "b", None, None, bob());
    room.wait(60);
    assert_eq!(
        view(
            &room.presence.remove(&1).unwrap_or_default(),
            seen_by_ada.clone()
        ),
        seen_by_ada
    );
    assert_eq!(diffs(&room.presence.remove(&1).unwrap_or_default()), 0);
    // Lost again, and gone: the leave comes once the grace is over.
    room.leave(3);
    room.wait(9_900);
    assert!(room.presence.remove(&1).is_none(), "left before the grace");
    room.wait(200);
    seen_by_ada = view(&room.presence.remove(&1).unwrap(), seen_by_ada);
    assert_eq!(seen_by_ada.keys().collect::<Vec<_>>(), ["Ada"]);
    // A clean close (1000): the leave at once.
    room.join_as(4, "b", None, None, bob());
    room.wait(60);
    seen_by_ada = view(&room.presence.remove(&1).unwrap(), seen_by_ada);
    assert_eq!(seen_by_ada.len(), 2);
    room.leave_as(4, true);
    room.wait(60);
    seen_by_ada = view(&room.presence.remove(&1).unwrap(), seen_by_ada);
    assert_eq!(seen_by_ada.len(), 1);
}

#[test]
fn presence_is_bounded_and_for_sessions_only() {
    let mut room = Room::new(Config {
        max_presence_bytes: 16,
        ..Config::default()
    });
    room.join(1, "a", None, None);
    room.send(
        1,
        ClientMsg::Presence {
            data: "x".repeat(17),
        },
    );
    assert_eq!(errors(&room.take(1)), [protocol::PRESENCE_TOO_LARGE]);
    // A flood: past the rate, dropped and told.
    for _ in 0..60 {
        room.send(1, ClientMsg::Presence { data: "y".into() });
    }
    let refused = errors(&room.take(1));
    assert_eq!(refused.len(), 10, "{refused:?}");
    assert!(refused.iter().all(|c| c == protocol::RATE_LIMITED));
    // Without a session: refused, and never sent presence.
    room.run(Event::Message(
        room.now,
        Inbound::open_join(ConnId(2), Encoding::Json),
    ));
    room.send(2, ClientMsg::Presence { data: "z".into() });
    assert_eq!(errors(&room.take(2)), [protocol::NO_SESSION]);
    room.wait(100);
    assert!(!room.presence.contains_key(&2));
}

/// One step of a random schedule.
#[derive(Clone, Debug)]
enum Step {
    /// Client `c` sends a new op.
    Op(usize),
    /// Client `c` sends again its op `back` ops ago.
    Retry(usize, usize),
    /// Client `c`'s connection drops (no close), and it rejoins resuming.
    Reconnect(usize),
    /// Every pending commit is written.
    Persist,
    /// The pending commit fails: the gathering restarts from the store.
    Fail,
    /// kill -9: pending commits are lost, the gathering is loaded again.
    Restart,
    /// The clock moves on (retries of forwards).
    Wait(u64),
    /// Client `c` sets its presence.
    Presence(usize),
    /// The host wants room: the gathering disperses (evicted), its
    /// successor loads what it wrote.
    Evict,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..3usize).prop_map(Step::Op),
        3 => (0..3usize, 0..4usize).prop_map(|(c, b)| Step::Retry(c, b)),
        2 => (0..3usize).prop_map(Step::Reconnect),
        4 => Just(Step::Persist),
        1 => Just(Step::Fail),
        1 => Just(Step::Restart),
        1 => (1..3000u64).prop_map(Step::Wait),
        2 => (0..3usize).prop_map(Step::Presence),
        1 => Just(Step::Evict),
    ]
}

/// A client as the SDK will be: a session, its ops (id, tag), the seq of
/// each ack, what it has seen of the op sequence.
#[derive(Default)]
struct Client {
    conn: u64,
    /// Connections it had before `conn`, whose last messages it reads.
    before: Vec<u64>,
    ops: Vec<(u64, u64)>,
    acked: BTreeMap<u64, u64>,
    /// Highest seq seen (forwards, acks and resyncs all move it on).
    seen: u64,
    epoch: u64,
    /// Who it sees here, and its own presence as last set.
    view: BTreeMap<String, Option<String>>,
    data: Option<String>,
}

#[test]
fn ops_apply_exactly_once_and_resumes_have_no_gap_over_random_schedules() {
    let config = Config {
        resume_ops: 16,
        snapshot_ops: 5,
        retry_interval: Duration::from_millis(500),
        // Waits of up to 3 s make some gatherings disperse idle.
        idle_timeout: Duration::from_secs(4),
        ..Config::default()
    };
    let strategy = proptest::collection::vec(step(), 1..150);
    let counts = std::cell::RefCell::new(gathering_tests::Counts::default());
    gathering_tests::check(256, strategy, |steps| {
        let mut counts = counts.borrow_mut();
        let mut room = Room::new(config.clone());
        let mut clients: Vec<Client> = (0..3).map(|_| Client::default()).collect();
        let mut next_conn = 0;
        let mut next_tag = 0;
        let names = ["c0", "c1", "c2"];
        let join = |room: &mut Room, c: &mut Client, name: &str, next_conn: &mut u64| {
            *next_conn += 1;
            c.before.push(c.conn);
            c.conn = *next_conn;
            let resume = (c.epoch != 0).then_some((c.seen, c.epoch));
            room.join(c.conn, name, resume.map(|r| r.0), resume.map(|r| r.1));
        };
        for (i, c) in clients.iter_mut().enumerate() {
            join(&mut room, c, names[i], &mut next_conn);
        }
        for step in steps {
            match step {
                Step::Op(c) => {
                    let client = &mut clients[c];
                    next_tag += 1;
                    let id = client.ops.len() as u64 + 1;
                    client.ops.push((id, next_tag));
                    room.op(client.conn, id, next_tag);
                }
                Step::Retry(c, back) => {
                    let client = &clients[c];
                    if let Some(&(id, tag)) = client.ops.iter().rev().nth(back) {
                        room.op(client.conn, id, tag);
                    }
                }
                Step::Reconnect(c) => {
                    room.leave(clients[c].conn);
                    join(&mut room, &mut clients[c], names[c], &mut next_conn);
                }
                Step::Persist => room.persist(),
                Step::Fail => {
                    if !room.pending.is_empty() {
                        for c in clients.iter_mut() {
                            c.data = None;
                        }
                        room.fail();
                        room.restart();
                        for (i, c) in clients.iter_mut().enumerate() {
                            join(&mut room, c, names[i], &mut next_conn);
                        }
                    }
                }
                Step::Restart => {
                    for c in clients.iter_mut() {
                        c.data = None;
                    }
                    room.restart();
                    for (i, c) in clients.iter_mut().enumerate() {
                        join(&mut room, c, names[i], &mut next_conn);
                    }
                }
                Step::Wait(ms) => {
                    room.now = room.now + Duration::from_millis(ms);
                    room.run(Event::Tick(room.now));
                }
                Step::Evict => room.run(Event::Evict(room.now)),
                Step::Presence(c) => {
                    next_tag += 1;
                    let data = format!("p{next_tag}");
                    clients[c].data = Some(data.clone());
                    room.send(clients[c].conn, ClientMsg::Presence { data });
                }
            }
            // A dispersal (idle or evicted) writes its final state; its
            // successor loads it, and the clients join it again.
            if matches!(room.g.phase(), Phase::Closing(_)) {
                room.persist();
            }
            if matches!(room.g.phase(), Phase::Dispersed(_)) {
                counts.bump("dispersals");
                for c in clients.iter_mut() {
                    c.data = None;
                }
                room.restart();
                for (i, c) in clients.iter_mut().enumerate() {
                    join(&mut room, c, names[i], &mut next_conn);
                }
            }
            // What each client was sent, in order, as the client reads it.
            for client in clients.iter_mut() {
                let mut msgs = Vec::new();
                for conn in client.before.drain(..).chain([client.conn]) {
                    msgs.extend(room.take(conn));
                    let presence = room.presence.remove(&conn).unwrap_or_default();
                    client.view = view(&presence, std::mem::take(&mut client.view));
                }
                for msg in msgs {
                    match msg {
                        ServerMsg::Welcome { epoch, seq, .. } => {
                            counts.bump(if client.epoch == epoch {
                                "resumes"
                            } else {
                                "new epochs"
                            });
                            if client.epoch != 0 && client.epoch != epoch {
                                // Another history: it is told by a resync.
                            }
                            assert!(
                                client.epoch == 0 || client.seen <= seq || client.epoch != epoch
                            );
                            client.epoch = epoch;
                        }
                        ServerMsg::Resync { seq, .. } => {
                            counts.bump("resyncs");
                            client.seen = seq;
                        }
                        ServerMsg::Forward { seq, .. } => {
                            // A forward is the next op or one seen again (a
                            // re-send); never a gap.
                            assert!(seq <= client.seen + 1, "gap: {seq} after {}", client.seen);
                            client.seen = client.seen.max(seq);
                        }
                        ServerMsg::Ack { id, seq } => {
                            if let Some(first) = client.acked.insert(id, seq) {
                                assert_eq!(first, seq, "op {id} acked as two seqs");
                                counts.bump("acked again");
                            }
                            client.seen = client.seen.max(seq);
                        }
                        ServerMsg::Error { code, .. } => {
                            counts.bump(if code == protocol::STALE_OP {
                                "stale"
                            } else {
                                "not durable"
                            });
                            assert!(
                                [protocol::STALE_OP, gathering_core::NOT_DURABLE]
                                    .contains(&code.as_str()),
                                "{code}"
                            );
                        }
                        ServerMsg::State { .. }
                        | ServerMsg::Dispersed { .. }
                        | ServerMsg::Presence { .. }
                        | ServerMsg::PresenceDiff { .. } => {}
                    }
                }
            }
            // No tag applied twice, in memory and in the store.
            let tags: Vec<u64> = room.g.app().0.iter().map(|(_, t)| *t).collect();
            let unique: BTreeSet<u64> = tags.iter().copied().collect();
            assert_eq!(unique.len(), tags.len(), "an op applied twice: {tags:?}");
        }
        // Each client sends again every op it has no ack for: each is then
        // acked, or refused as stale (its id is below one applied since,
        // so it can no longer be told from an op that applied) and not in
        // the state; none is applied twice.
        room.persist();
        let mut stale = 0;
        for client in clients.iter_mut() {
            let unacked: Vec<(u64, u64)> = client
                .ops
                .iter()
                .filter(|(id, _)| !client.acked.contains_key(id))
                .copied()
                .collect();
            for (id, tag) in unacked {
                room.op(client.conn, id, tag);
            }
            room.persist();
            for msg in room.take(client.conn) {
                match msg {
                    ServerMsg::Ack { id, seq } => {
                        if let Some(first) = client.acked.insert(id, seq) {
                            assert_eq!(first, seq, "op {id} acked as two seqs");
                        }
                    }
                    ServerMsg::Error { code, .. } if code == protocol::STALE_OP => stale += 1,
                    ServerMsg::Forward { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        // Presence converges: once a diff is due, each sees everyone with
        // the presence each set last.
        room.wait(100);
        let everyone: BTreeMap<String, Option<String>> = clients
            .iter()
            .zip(names)
            .map(|(c, name)| (name.to_string(), c.data.clone()))
            .collect();
        for client in clients.iter_mut() {
            let presence = room.presence.remove(&client.conn).unwrap_or_default();
            client.view = view(&presence, std::mem::take(&mut client.view));
            assert_eq!(client.view, everyone, "presence did not converge");
        }
        let acked: usize = clients.iter().map(|c| c.acked.len()).sum();
        let sent: usize = clients.iter().map(|c| c.ops.len()).sum();
        assert_eq!(acked + stale, sent, "an op neither acked nor refused");
        assert_eq!(room.g.app().0.len(), acked);
        let applied = &room.g.app().0;
        for (i, client) in clients.iter().enumerate() {
            for (id, seq) in &client.acked {
                let tag = client.ops[*id as usize - 1].1;
                let at = applied.get(*seq as usize - 1);
                assert_eq!(
                    at,
                    Some(&(names[i].to_string(), tag)),
                    "op {id} acked as {seq}"
                );
            }
        }
    });
    let counts = counts.into_inner();
    println!("{counts:?}");
    counts.assert_at_least(&[
        ("resumes", 500),
        ("new epochs", 100),
        ("resyncs", 50),
        ("acked again", 100),
        ("not durable", 10),
        ("stale", 1),
        ("dispersals", 100),
    ]);
}
