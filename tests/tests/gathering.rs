//! Scenario tests of one gathering on a fake clock: exact instants, the
//! persist-before-ack rule, retries with backoff, and the dispersal sequence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::protocol::{self, CLOSE_DISPERSED, CLOSE_GOING_AWAY, CLOSE_POLICY};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    Action, ClientMsg, Commit, Config, ConnId, Deadline, Delivery, DisperseReason, Duration,
    Encoding, Event, Frame, Gathering, GatheringId, Inbound, Instant, Loaded, LogEntry, Phase,
    ServerMsg, Snapshot, Verdict, Why,
};

type Server = ServerMsg<TournamentOp, Tournament>;

const T0: Instant = Instant::from_millis(10_000);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn gathering(config: Config) -> Gathering<Tournament> {
    Gathering::new(GatheringId::parse("t").unwrap(), config, T0)
}

fn drain<A: gathering_core::App>(g: &mut Gathering<A>) -> Vec<Action> {
    std::iter::from_fn(|| g.poll_action()).collect()
}

fn join(g: &mut Gathering<Tournament>, at: Instant, conn: u64) {
    g.handle(Event::Message(
        at,
        Inbound::open_join(ConnId(conn), Encoding::Json),
    ));
}

fn send(
    g: &mut Gathering<Tournament>,
    at: Instant,
    conn: u64,
    msg: ClientMsg<TournamentOp>,
    enc: Encoding,
) {
    let frame = protocol::encode(&msg, enc).unwrap();
    g.handle(Event::Message(at, Inbound::open_frame(ConnId(conn), frame)));
}

fn register(id: u64, name: &str) -> ClientMsg<TournamentOp> {
    ClientMsg::Op {
        id,
        op: TournamentOp::RegisterPlayer { name: name.into() },
    }
}

/// Decoded sends: (conn, message, delivery).
fn sends(actions: &[Action]) -> Vec<(u64, Server, Delivery)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                frame,
                delivery,
            } => Some((
                conn.0,
                protocol::decode::<Server>(frame).unwrap(),
                *delivery,
            )),
            _ => None,
        })
        .collect()
}

/// The commit among `actions`, if any.
fn commit(actions: &[Action]) -> Option<&Commit> {
    actions.iter().find_map(|a| match a {
        Action::Persist(commit) => Some(commit),
        _ => None,
    })
}

fn persist(actions: &[Action]) -> Option<u64> {
    commit(actions).map(|c| c.seq)
}

#[test]
fn idle_deadline_is_exact_and_early_ticks_change_only_the_deadline() {
    let config = Config {
        idle_timeout: secs(60),
        ..Config::default()
    };
    let mut g = gathering(config);
    assert_eq!(
        g.next_deadline(),
        Some(Deadline {
            at: T0 + secs(60),
            why: Why::Idle
        })
    );

    let t1 = T0 + secs(10);
    join(&mut g, t1, 1);
    assert!(drain(&mut g).is_empty());
    assert_eq!(
        g.next_deadline(),
        Some(Deadline {
            at: t1 + secs(60),
            why: Why::Idle
        })
    );

    // The host's timer was armed for T0 + 60 s and fires early: nothing happens.
    g.handle(Event::Tick(T0 + secs(60)));
    assert!(drain(&mut g).is_empty());
    assert_eq!(g.phase(), Phase::Live);
    // One nanosecond before the deadline: still nothing.
    g.handle(Event::Tick(t1 + secs(60) - Duration::from_nanos(1)));
    assert!(drain(&mut g).is_empty());

    g.handle(Event::Tick(t1 + secs(60)));
    assert_eq!(
        drain(&mut g),
        [Action::Disperse {
            reason: DisperseReason::Idle,
            processed: 1,
            late: Duration::ZERO
        }]
    );
    assert_eq!(g.phase(), Phase::Asking(DisperseReason::Idle));
    assert_eq!(g.next_deadline(), None, "waiting for the hall");
}

#[test]
fn a_late_tick_reports_how_late_it_was() {
    let mut g = gathering(Config {
        idle_timeout: secs(60),
        ..Config::default()
    });
    join(&mut g, T0, 1);
    drain(&mut g);
    let late = Duration::from_micros(1_500);
    g.handle(Event::Tick(T0 + secs(60) + late));
    assert_eq!(
        drain(&mut g),
        [Action::Disperse {
            reason: DisperseReason::Idle,
            processed: 1,
            late
        }]
    );
}

#[test]
fn default_idle_timeout_is_a_day() {
    let g = gathering(Config::default());
    assert_eq!(g.next_deadline().unwrap().at, T0 + secs(24 * 60 * 60));
}

#[test]
fn own_retries_and_garbage_do_not_keep_it_alive() {
    let config = Config {
        idle_timeout: secs(60),
        retry_interval: secs(1),
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    let seq = persist(&drain(&mut g)).unwrap();
    g.handle(Event::Persisted(T0, seq));
    drain(&mut g);
    // Conn 2 never acknowledges: the gathering retries, and still goes idle on time.
    let mut now = T0;
    let mut resends = 0;
    while let Some(d) = g.next_deadline() {
        now = d.at;
        g.handle(Event::Tick(now));
        let actions = drain(&mut g);
        resends += sends(&actions).len();
        if actions.iter().any(|a| matches!(a, Action::Disperse { .. })) {
            break;
        }
        if now == T0 + secs(7) {
            send(&mut g, now, 1, ClientMsg::Ack { seq: 0 }, Encoding::Json);
            g.handle(Event::Message(
                now,
                Inbound::open_frame(ConnId(1), Frame::Text("nope".into())),
            ));
            drain(&mut g);
        }
    }
    assert!(resends >= 4, "{resends}");
    // The ack at 7 s counted as activity (the garbage with it did not); the
    // retries at 15, 31 and 61 s did not.
    assert_eq!(now, T0 + secs(67));
}

#[test]
fn ops_are_acked_and_forwarded_only_once_durable_and_batched() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    g.handle(Event::Message(
        T0,
        Inbound::open_join(ConnId(3), Encoding::Postcard),
    ));
    send(&mut g, T0, 1, register(7, "Ada"), Encoding::Json);
    let actions = drain(&mut g);
    assert_eq!(persist(&actions), Some(1));
    assert!(
        sends(&actions).is_empty(),
        "nothing is acked before it is durable"
    );

    // Two more ops while the first write is in flight: one batched write.
    send(&mut g, T0, 2, register(8, "Bob"), Encoding::Json);
    send(&mut g, T0, 1, register(9, "Cy"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), None);

    g.handle(Event::Persisted(T0, 1));
    let actions = drain(&mut g);
    let got = sends(&actions);
    assert!(got.contains(&(1, ServerMsg::Ack { id: 7, seq: 1 }, Delivery::Once)));
    let forward = ServerMsg::Forward {
        seq: 1,
        op: TournamentOp::RegisterPlayer { name: "Ada".into() },
    };
    assert!(got.contains(&(2, forward.clone(), Delivery::Retried)));
    assert!(got.contains(&(3, forward, Delivery::Retried)));
    assert_eq!(got.len(), 3);
    // Conn 3 speaks postcard and is answered in postcard.
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Send {
            conn: ConnId(3),
            frame: Frame::Binary(_),
            ..
        }
    )));
    assert_eq!(persist(&actions), Some(3), "the batch of the two later ops");

    g.handle(Event::Persisted(T0, 3));
    let got = sends(&drain(&mut g));
    assert!(got.contains(&(2, ServerMsg::Ack { id: 8, seq: 2 }, Delivery::Once)));
    assert!(got.contains(&(1, ServerMsg::Ack { id: 9, seq: 3 }, Delivery::Once)));
    assert_eq!(got.len(), 2 + 4);
}

#[test]
fn overlapping_commits_carry_only_their_own_ops_and_release_in_order() {
    let overlap = Config {
        overlap_commits: true,
        ..Config::default()
    };
    let mut g = gathering(overlap);
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    let first = commit(&drain(&mut g)).cloned().unwrap();
    assert_eq!((first.seq, first.log.len()), (1, 1));
    // Two more while the first waits: handed over at once, on their own.
    send(&mut g, T0, 2, register(2, "Bob"), Encoding::Json);
    send(&mut g, T0, 1, register(3, "Cy"), Encoding::Json);
    let actions = drain(&mut g);
    assert!(sends(&actions).is_empty(), "nothing out before durable");
    let second = commit(&actions).cloned().unwrap();
    assert_eq!(second.seq, 3);
    let seqs: Vec<u64> = second.log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3], "only the ops the first does not hold");
    // Nothing new: no third commit.
    assert_eq!(persist(&drain(&mut g)), None);

    // The first is durable: only its op goes out.
    g.handle(Event::Persisted(T0, 1));
    let got = sends(&drain(&mut g));
    assert!(got.contains(&(1, ServerMsg::Ack { id: 1, seq: 1 }, Delivery::Once)));
    assert_eq!(got.len(), 2, "Ada's ack and one forward");
    g.handle(Event::Persisted(T0, 3));
    let got = sends(&drain(&mut g));
    assert!(got.contains(&(2, ServerMsg::Ack { id: 2, seq: 2 }, Delivery::Once)));
    assert!(got.contains(&(1, ServerMsg::Ack { id: 3, seq: 3 }, Delivery::Once)));
    assert_eq!(got.len(), 4);

    // Without overlap the same traffic waits for the first commit.
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    send(&mut g, T0, 1, register(2, "Bob"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), None);
}

#[test]
fn with_overlapping_commits_a_failure_refuses_every_op_not_durable() {
    let mut g = gathering(Config {
        overlap_commits: true,
        ..Config::default()
    });
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    send(&mut g, T0, 1, register(2, "Bob"), Encoding::Json);
    drain(&mut g);
    send(&mut g, T0, 1, register(3, "Cy"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(3));
    g.handle(Event::Persisted(T0, 2));
    drain(&mut g);
    // The second commit fails: Cy's op is refused, and the host answers
    // no later commit as written (here: the failure, repeated).
    g.handle(Event::PersistFailed(T0));
    let actions = drain(&mut g);
    assert_eq!(errors(&actions), [(1, Some(3), "not_durable".to_string())]);
    assert_eq!(persist(&actions), None);
    assert_eq!((g.seq(), g.durable_seq()), (2, 2));
    // A late success changes nothing: only what was durable is.
    g.handle(Event::Persisted(T0, 3));
    g.handle(Event::PersistFailed(T0));
    assert!(sends(&drain(&mut g)).is_empty());
    assert_eq!(g.durable_seq(), 2);
}

#[test]
fn rejected_ops_get_an_error_and_change_nothing() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, ""), Encoding::Json);
    let actions = drain(&mut g);
    assert_eq!(persist(&actions), None);
    match &sends(&actions)[..] {
        [
            (
                1,
                ServerMsg::Error {
                    id: Some(1),
                    code,
                    message,
                },
                Delivery::Once,
            ),
        ] => {
            assert_eq!(code, "invalid_name");
            assert!(message.contains("blank"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.seq(), 0);
    assert_eq!(g.app(), &Tournament::default());

    g.handle(Event::Message(
        T0,
        Inbound::open_frame(ConnId(1), Frame::Binary(vec![0xff].into())),
    ));
    match &sends(&drain(&mut g))[..] {
        [
            (
                1,
                ServerMsg::Error {
                    id: None,
                    code,
                    message,
                },
                _,
            ),
        ] => {
            assert_eq!(code, "bad_frame");
            assert!(message.starts_with("invalid postcard message"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn forwards_retry_with_backoff_until_acked() {
    let config = Config {
        retry_interval: secs(1),
        max_retry_interval: secs(4),
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    drain(&mut g);
    g.handle(Event::Persisted(T0, 1));
    drain(&mut g);
    let mut at = Vec::new();
    for _ in 0..5 {
        let d = g.next_deadline().unwrap();
        assert_eq!(d.why, Why::Retry);
        g.handle(Event::Tick(d.at));
        let got = sends(&drain(&mut g));
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            (2, ServerMsg::Forward { seq: 1, .. }, Delivery::Retried)
        ));
        at.push(d.at.saturating_since(T0).as_secs());
    }
    assert_eq!(at, [1, 3, 7, 11, 15], "1 s, doubling, capped at 4 s");
    send(
        &mut g,
        T0 + secs(15),
        2,
        ClientMsg::Ack { seq: 1 },
        Encoding::Json,
    );
    assert_eq!(
        g.next_deadline().unwrap().why,
        Why::Retry,
        "a stale bound is allowed: it is early, never late"
    );
    g.handle(Event::Tick(T0 + secs(19)));
    assert!(drain(&mut g).is_empty());
    assert_eq!(g.next_deadline().unwrap().why, Why::Idle);
}

#[test]
fn a_connection_that_never_acks_is_closed_not_buffered_forever() {
    let config = Config {
        max_unacked: 2,
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    for i in 1..=3 {
        send(&mut g, T0, 1, register(i, &format!("p{i}")), Encoding::Json);
        drain(&mut g);
        g.handle(Event::Persisted(T0, i));
        let actions = drain(&mut g);
        if i == 3 {
            assert!(actions.contains(&Action::Close {
                conn: ConnId(2),
                code: CLOSE_POLICY,
                reason: "too many unacknowledged forwards"
            }));
            assert_eq!(refusals(&actions), ["lagging"]);
        } else {
            assert_eq!(refusals(&actions), Vec::<&str>::new());
        }
    }
    assert_eq!(g.connections(), 1);
}

#[test]
fn dispersal_persists_then_says_goodbye_once_then_closes() {
    let config = Config {
        idle_timeout: secs(60),
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    g.handle(Event::Message(
        T0,
        Inbound::open_join(ConnId(2), Encoding::Postcard),
    ));
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    drain(&mut g);
    let due = T0 + secs(60);
    g.handle(Event::Tick(due));
    assert_eq!(
        drain(&mut g),
        [Action::Disperse {
            reason: DisperseReason::Idle,
            processed: 3,
            late: Duration::ZERO
        }]
    );
    g.handle(Event::Verdict(due, Verdict::Granted));
    assert!(
        drain(&mut g).is_empty(),
        "the write of op 1 is still in flight"
    );
    g.handle(Event::Persisted(due + secs(1), 1));
    let actions = drain(&mut g);
    let got = sends(&actions);
    assert_eq!(
        got[0],
        (1, ServerMsg::Ack { id: 1, seq: 1 }, Delivery::Once),
        "acks precede goodbye"
    );
    let goodbye = ServerMsg::Dispersed {
        reason: DisperseReason::Idle,
    };
    assert_eq!(
        got[1..],
        [
            (1, goodbye.clone(), Delivery::Once),
            (2, goodbye, Delivery::Once)
        ]
    );
    let closes: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Close { .. }))
        .collect();
    assert_eq!(closes.len(), 2);
    assert!(closes.iter().all(|a| matches!(
        a,
        Action::Close {
            code: CLOSE_DISPERSED,
            ..
        }
    )));
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Idle
        })
    );
    assert_eq!(g.phase(), Phase::Dispersed(DisperseReason::Idle));
    assert_eq!(g.next_deadline(), None);
    // Anything that still reaches it goes back to the hall.
    let late = Inbound::open_join(ConnId(9), Encoding::Json);
    g.handle(Event::Message(due + secs(2), late.clone()));
    assert_eq!(drain(&mut g), [Action::Bounce(late)]);
}

#[test]
fn a_refused_dispersal_goes_back_to_serving() {
    let config = Config {
        idle_timeout: secs(60),
        ..Config::default()
    };
    let mut g = gathering(config);
    g.handle(Event::Tick(T0 + secs(60)));
    drain(&mut g);
    // Traffic the hall had already routed arrives, then the refusal.
    join(&mut g, T0 + secs(61), 1);
    g.handle(Event::Verdict(T0 + secs(61), Verdict::Refused));
    assert_eq!(g.phase(), Phase::Live);
    assert_eq!(
        g.next_deadline(),
        Some(Deadline {
            at: T0 + secs(121),
            why: Why::Idle
        })
    );
}

#[test]
fn empty_grace_disperses_an_abandoned_gathering() {
    let config = Config {
        empty_grace: Some(secs(30)),
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    assert_eq!(g.next_deadline().unwrap().why, Why::Idle);
    g.handle(Event::Message(
        T0 + secs(5),
        Inbound::Leave {
            conn: ConnId(1),
            clean: false,
        },
    ));
    assert_eq!(
        g.next_deadline(),
        Some(Deadline {
            at: T0 + secs(35),
            why: Why::Empty
        })
    );
    g.handle(Event::Tick(T0 + secs(35)));
    assert_eq!(
        drain(&mut g),
        [Action::Disperse {
            reason: DisperseReason::Empty,
            processed: 2,
            late: Duration::ZERO
        }]
    );
}

#[test]
fn shutdown_closes_with_going_away_after_the_final_persist() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    drain(&mut g);
    g.handle(Event::Shutdown(T0));
    assert!(drain(&mut g).is_empty());
    g.handle(Event::Persisted(T0, 1));
    let actions = drain(&mut g);
    assert!(actions.contains(&Action::Close {
        conn: ConnId(1),
        code: CLOSE_GOING_AWAY,
        reason: DisperseReason::Shutdown.close_text(),
    }));
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Shutdown
        })
    );
}

/// Drains `g`, hands every commit to `store` as a store would and answers
/// it; returns the commits.
fn commit_all(g: &mut Gathering<Tournament>, store: &mut Loaded, now: Instant) -> Vec<Commit> {
    let mut commits = Vec::new();
    loop {
        let actions = drain(g);
        let mut any = false;
        for a in actions {
            if let Action::Persist(commit) = a {
                any = true;
                store.apply(commit.clone());
                g.handle(Event::Persisted(now, commit.seq));
                commits.push(commit);
            }
        }
        if !any {
            return commits;
        }
    }
}

#[test]
fn commits_carry_ops_not_state_and_snapshot_at_the_bound() {
    let config = Config {
        snapshot_ops: 4,
        ..Config::default()
    };
    let mut g = gathering(config.clone());
    join(&mut g, T0, 1);
    let mut store = Loaded::default();
    let mut commits = Vec::new();
    for i in 1..=10 {
        send(&mut g, T0, 1, register(i, &format!("p{i}")), Encoding::Json);
        commits.extend(commit_all(&mut g, &mut store, T0));
    }
    // One op each. At the fourth the log reaches the bound and the commit
    // is a snapshot instead; the next waits until the log also holds as
    // many bytes as that snapshot (the state grew: at op 10, not op 8).
    let shape: Vec<(u64, usize, bool)> = commits
        .iter()
        .map(|c| (c.seq, c.log.len(), c.snapshot.is_some()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, 1, false),
            (2, 1, false),
            (3, 1, false),
            (4, 0, true),
            (5, 1, false),
            (6, 1, false),
            (7, 1, false),
            (8, 1, false),
            (9, 1, false),
            (10, 0, true)
        ]
    );
    // A log commit costs its op, whatever the state holds.
    assert!(commits[8].bytes() < 16, "{}", commits[8].bytes());
    // Ops 5 to 8 log fewer bytes than the snapshot of op 4, ops 5 to 10
    // (the last in the deciding commit) as many or more.
    let entry = commits[8].bytes();
    let snapshot_4 = commits[3].bytes();
    assert!(
        4 * entry < snapshot_4 && 6 * entry >= snapshot_4,
        "{entry} {snapshot_4}"
    );
    // The store keeps the snapshot of op 10 and no entry: it covers them.
    assert_eq!(store.snapshot.as_ref().map(|s| s.seq), Some(10));
    assert!(store.log.is_empty());
    let id = GatheringId::parse("t").unwrap();
    let back: Gathering<Tournament> = Gathering::restore(id, config, T0, &store).unwrap();
    assert_eq!(back.app(), g.app());
    assert_eq!(back.seq(), 10);
    assert_eq!(back.app().players.len(), 10);
}

#[test]
fn a_restored_gathering_snapshots_after_the_rest_of_its_bound() {
    let config = Config {
        snapshot_ops: 3,
        ..Config::default()
    };
    let mut g = gathering(config.clone());
    join(&mut g, T0, 1);
    let mut store = Loaded::default();
    for i in 1..=2 {
        send(&mut g, T0, 1, register(i, &format!("p{i}")), Encoding::Json);
        commit_all(&mut g, &mut store, T0);
    }
    let id = GatheringId::parse("t").unwrap();
    let mut back: Gathering<Tournament> = Gathering::restore(id, config, T0, &store).unwrap();
    join(&mut back, T0, 2);
    send(&mut back, T0, 2, register(3, "p3"), Encoding::Json);
    let commits = commit_all(&mut back, &mut store, T0);
    // Two logged before the restart count towards the bound.
    assert_eq!(commits.len(), 1);
    assert!(commits[0].snapshot.is_some());
}

#[test]
fn restore_refuses_garbage_gaps_and_entries_that_do_not_apply() {
    let id = GatheringId::parse("t").unwrap();
    let restore = |loaded: &Loaded| {
        Gathering::<Tournament>::restore(id.clone(), Config::default(), T0, loaded)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let garbage = Loaded {
        snapshot: Some(Snapshot {
            seq: 1,
            bytes: vec![0xff, 0xff],
        }),
        log: Vec::new(),
    };
    assert!(
        restore(&garbage).contains("snapshot of op 1"),
        "{}",
        restore(&garbage)
    );
    let op = |seq, name: &str| LogEntry {
        seq,
        bytes: gathering_core::commit::encode_entry(
            &gathering_core::Member::open(ConnId(1)),
            &TournamentOp::RegisterPlayer { name: name.into() },
        )
        .unwrap(),
    };
    let gap = Loaded {
        snapshot: None,
        log: vec![op(1, "a"), op(3, "b")],
    };
    assert!(
        restore(&gap).contains("jumps from op 1 to op 3"),
        "{}",
        restore(&gap)
    );
    let twice = Loaded {
        snapshot: None,
        log: vec![op(1, "a"), op(2, "a")],
    };
    assert!(
        restore(&twice).contains("op 2 does not apply"),
        "{}",
        restore(&twice)
    );
    // Entries a snapshot covers are skipped, not applied twice.
    let mut with_snapshot = Gathering::<Tournament>::new(id.clone(), Config::default(), T0);
    send(&mut with_snapshot, T0, 1, register(1, "a"), Encoding::Json);
    let snapshot = Snapshot {
        seq: 1,
        bytes: postcard::to_allocvec(with_snapshot.app()).unwrap(),
    };
    let covered = Loaded {
        snapshot: Some(snapshot),
        log: vec![op(1, "a"), op(2, "b")],
    };
    let back = Gathering::<Tournament>::restore(id, Config::default(), T0, &covered).unwrap();
    assert_eq!(back.seq(), 2);
}

#[test]
fn dispersal_writes_nothing_when_all_is_durable_and_a_snapshot_otherwise() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    let mut store = Loaded::default();
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    commit_all(&mut g, &mut store, T0);
    g.handle(Event::Shutdown(T0));
    let actions = drain(&mut g);
    // Told and closed at once: no commit to wait for.
    assert!(persist(&actions).is_none(), "{actions:?}");
    assert!(actions.contains(&Action::Dispersed {
        reason: DisperseReason::Shutdown
    }));

    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    g.handle(Event::Shutdown(T0));
    let Some(Action::Persist(commit)) = drain(&mut g)
        .into_iter()
        .find(|a| matches!(a, Action::Persist(_)))
    else {
        panic!("the op not yet durable is written")
    };
    // Closing compacts: the successor loads without replaying.
    assert!(commit.snapshot.is_some() && commit.log.is_empty());
}

#[test]
fn a_forward_is_resent_for_its_own_age_only() {
    let config = Config {
        retry_interval: secs(1),
        max_retry_interval: secs(8),
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    let mut store = Loaded::default();
    let forwards_to_2 = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        conn: ConnId(2),
                        delivery: Delivery::Retried,
                        ..
                    }
                )
            })
            .count()
    };
    // Op 1 forwarded at T0, op 2 at T0 + 900 ms.
    send(&mut g, T0, 1, register(1, "a"), Encoding::Json);
    commit_all(&mut g, &mut store, T0);
    let later = T0 + Duration::from_millis(900);
    send(&mut g, later, 1, register(2, "b"), Encoding::Json);
    commit_all(&mut g, &mut store, later);
    // Op 1 acknowledged at T0 + 950 ms: the retry now falls when op 2 has
    // waited its interval, not at T0 + 1 s.
    let acked = T0 + Duration::from_millis(950);
    send(&mut g, acked, 2, ClientMsg::Ack { seq: 1 }, Encoding::Json);
    drain(&mut g);
    // The gathering's retry bound is a lower bound: ticked then, nothing
    // is re-sent, and the bound becomes exact.
    g.handle(Event::Tick(T0 + secs(1)));
    assert_eq!(
        forwards_to_2(&drain(&mut g)),
        0,
        "re-sent before its own interval"
    );
    assert_eq!(g.next_deadline().map(|d| d.at), Some(later + secs(1)));
    g.handle(Event::Tick(later + secs(1)));
    assert_eq!(forwards_to_2(&drain(&mut g)), 1);
}

#[test]
fn ops_past_the_in_flight_bound_are_refused_until_acks_go_out() {
    let config = Config {
        max_in_flight: 2,
        ..Config::default()
    };
    let mut g = gathering(config);
    join(&mut g, T0, 1);
    for i in 1..=3 {
        send(&mut g, T0, 1, register(i, &format!("p{i}")), Encoding::Json);
    }
    let actions = drain(&mut g);
    // The third waits behind two not yet durable: refused at once, not applied.
    let refused: Vec<_> = sends(&actions)
        .into_iter()
        .filter_map(|(_, msg, _)| match msg {
            ServerMsg::Error { id, code, message } => Some((id, code, message)),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, Some(3));
    assert_eq!(refused[0].1, "too_many_in_flight");
    assert!(refused[0].2.contains("2 ops"), "{}", refused[0].2);
    assert_eq!(g.seq(), 2);
    assert!(!g.app().players.contains_key("p3"));
    // Once their acks are out, the connection may send again.
    g.handle(Event::Persisted(T0, 2));
    drain(&mut g);
    send(&mut g, T0, 1, register(4, "p3"), Encoding::Json);
    assert_eq!(g.seq(), 3);
}

#[test]
fn error_messages_quote_a_short_escaped_prefix_of_the_input() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    let huge = format!("\u{1b}[31m{}", "x".repeat(1 << 20));
    let result = ClientMsg::Op {
        id: 1,
        op: TournamentOp::DropPlayer { name: huge.clone() },
    };
    send(&mut g, T0, 1, result, Encoding::Json);
    // An unknown op kind, a megabyte long, in JSON and in postcard.
    let unknown = format!(r#"{{"type":"op","id":2,"op":{{"type":"{huge}"}}}}"#);
    g.handle(Event::Message(
        T0,
        Inbound::open_frame(ConnId(1), Frame::Text(unknown.into())),
    ));
    let mut garbage = vec![0u8, 9];
    garbage.extend(huge.as_bytes());
    g.handle(Event::Message(
        T0,
        Inbound::open_frame(ConnId(1), Frame::Binary(garbage.into())),
    ));
    let errors: Vec<String> = sends(&drain(&mut g))
        .into_iter()
        .filter_map(|(_, msg, _)| match msg {
            ServerMsg::Error { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for message in &errors {
        assert!(
            message.len() <= protocol::MAX_MESSAGE_BYTES,
            "{} bytes",
            message.len()
        );
        assert!(
            !message.contains('\u{1b}'),
            "control characters are escaped: {message:?}"
        );
    }
    assert!(
        errors[0].starts_with(r#"no player named "\u{1b}[31mxxx"#),
        "{}",
        errors[0]
    );
}

/// The codes of the `Refused` actions, in order.
fn refusals(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Refused { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn errors(actions: &[Action]) -> Vec<(u64, Option<u64>, String)> {
    sends(actions)
        .into_iter()
        .filter_map(|(conn, msg, _)| match msg {
            ServerMsg::Error { id, code, .. } => Some((conn, id, code)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_commit_refuses_its_ops_and_restarts_from_the_durable_state() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    join(&mut g, T0, 2);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    send(&mut g, T0, 2, register(2, "Bob"), Encoding::Json);
    g.handle(Event::PersistFailed(T0));
    let actions = drain(&mut g);
    // Both ops were waiting on the failed write (Bob's for the next one):
    // their senders are told, and the gathering asks to restart.
    assert_eq!(
        errors(&actions),
        [
            (1, Some(1), "not_durable".to_string()),
            (2, Some(2), "not_durable".to_string())
        ]
    );
    assert_eq!(persist(&actions), None);
    assert!(actions.contains(&Action::Disperse {
        reason: DisperseReason::StorageFailed,
        processed: 4,
        late: Duration::ZERO
    }));
    assert_eq!(g.seq(), 0, "nothing past the durable state counts");
    // Meanwhile requests are refused; acks are still taken.
    send(&mut g, T0, 1, register(3, "Cy"), Encoding::Json);
    send(&mut g, T0, 1, ClientMsg::Fetch { id: 4 }, Encoding::Json);
    assert_eq!(
        errors(&drain(&mut g)),
        [
            (1, Some(3), "storage_failed".to_string()),
            (1, Some(4), "storage_failed".to_string())
        ]
    );
    // Granted: no write, the goodbye at once, with 1011.
    g.handle(Event::Verdict(T0, Verdict::Granted));
    let actions = drain(&mut g);
    assert_eq!(persist(&actions), None);
    let goodbye = ServerMsg::Dispersed {
        reason: DisperseReason::StorageFailed,
    };
    assert_eq!(
        sends(&actions),
        [
            (1, goodbye.clone(), Delivery::Once),
            (2, goodbye, Delivery::Once)
        ]
    );
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::Close { code, .. } if *code != protocol::CLOSE_INTERNAL))
    );
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::StorageFailed
        })
    );
}

#[test]
fn a_failed_final_commit_still_says_goodbye() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    // Shutdown waits for the write, which fails: the op is refused and the
    // gathering closes anyway, so a shutdown ends while storage fails.
    g.handle(Event::Shutdown(T0));
    assert!(drain(&mut g).is_empty());
    g.handle(Event::PersistFailed(T0));
    let actions = drain(&mut g);
    assert_eq!(errors(&actions), [(1, Some(1), "not_durable".to_string())]);
    assert_eq!(persist(&actions), None);
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Shutdown
        })
    );
}

/// A counter whose every serialization is counted, to see how often a
/// gathering encodes its state, padded to `PAD` bytes to be large or small.
#[derive(Default, serde::Deserialize)]
struct Counted(u64);

thread_local! {
    static ENCODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static PAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl serde::Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.set(ENCODED.get() + 1);
        serde::Serialize::serialize(&(self.0, "x".repeat(PAD.get())), s)
    }
}

/// What a fetch of `Counted` answers.
type CountedReply = ServerMsg<u64, (u64, String)>;

impl gathering_core::App for Counted {
    const NAME: &'static str = "counted";
    type Op = u64;
    type Presence = ();
    fn apply(
        &mut self,
        _: &gathering_core::Member,
        op: &u64,
    ) -> Result<(), gathering_core::Rejection> {
        self.0 += op;
        Ok(())
    }
}

#[test]
fn fetches_of_one_seq_share_one_encoding_of_a_large_state_per_encoding() {
    // Large: past the size below which re-encoding is cheaper than keeping.
    PAD.set(5000);
    let pad = || "x".repeat(5000);
    let mut g = Gathering::<Counted>::new(GatheringId::parse("c").unwrap(), Config::default(), T0);
    let encodings = [Encoding::Json, Encoding::Postcard];
    for (conn, encoding) in (1..=4).zip(encodings.into_iter().cycle()) {
        g.handle(Event::Message(
            T0,
            Inbound::open_join(ConnId(conn), encoding),
        ));
    }
    drain(&mut g);
    let fetch_all = |g: &mut Gathering<Counted>, first_id: u64| {
        for (conn, encoding) in (1..=4).zip(encodings.into_iter().cycle()) {
            let msg = ClientMsg::<u64>::Fetch {
                id: first_id + conn,
            };
            let frame = protocol::encode(&msg, encoding).unwrap();
            g.handle(Event::Message(T0, Inbound::open_frame(ConnId(conn), frame)));
        }
        let before = ENCODED.get();
        let replies: Vec<_> = drain(g)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { conn, frame, .. } => {
                    Some((conn.0, protocol::decode::<CountedReply>(&frame).unwrap()))
                }
                _ => None,
            })
            .collect();
        // Decoding counts nothing; the count is the gathering's.
        assert_eq!(ENCODED.get(), before);
        replies
    };
    ENCODED.set(0);
    let replies = fetch_all(&mut g, 10);
    assert_eq!(
        ENCODED.get(),
        2,
        "one encoding per encoding for four fetches"
    );
    for (conn, reply) in &replies {
        assert_eq!(
            *reply,
            ServerMsg::State {
                id: 10 + conn,
                seq: 0,
                state: (0, pad())
            }
        );
    }
    fetch_all(&mut g, 20);
    assert_eq!(ENCODED.get(), 2, "the same seq is served from the cache");

    // An op changes the state: the next fetches encode it anew, and see it.
    let frame = protocol::encode(&ClientMsg::<_>::Op { id: 1, op: 5u64 }, Encoding::Json).unwrap();
    g.handle(Event::Message(T0, Inbound::open_frame(ConnId(1), frame)));
    drain(&mut g);
    let replies = fetch_all(&mut g, 30);
    assert_eq!(ENCODED.get(), 4);
    for (conn, reply) in &replies {
        assert_eq!(
            *reply,
            ServerMsg::State {
                id: 30 + conn,
                seq: 1,
                state: (5, pad())
            }
        );
    }

    // A small state is encoded for each fetch and kept for none.
    PAD.set(10);
    let frame = protocol::encode(&ClientMsg::<_>::Op { id: 2, op: 1u64 }, Encoding::Json).unwrap();
    g.handle(Event::Message(T0, Inbound::open_frame(ConnId(1), frame)));
    drain(&mut g);
    ENCODED.set(0);
    fetch_all(&mut g, 40);
    fetch_all(&mut g, 50);
    assert_eq!(ENCODED.get(), 8);
}

/// A tally that admits anyone but role `banned`, and counts who added.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Guarded(Vec<String>);

impl gathering_core::App for Guarded {
    const NAME: &'static str = "guarded";
    type Op = ();
    type Presence = ();
    fn apply(
        &mut self,
        by: &gathering_core::Member,
        _: &(),
    ) -> Result<(), gathering_core::Rejection> {
        self.0.push(by.id.clone());
        Ok(())
    }
    fn admit(&self, member: &gathering_core::Member) -> Result<(), gathering_core::Rejection> {
        match member.role() {
            Some("banned") => Err(gathering_core::Rejection::new(
                protocol::FORBIDDEN,
                "banned here",
            )),
            _ => Ok(()),
        }
    }
}

#[test]
fn the_app_decides_joins_and_ops_with_the_member() {
    use gathering_core::Member;
    use std::sync::Arc;
    let mut g = Gathering::<Guarded>::new(GatheringId::parse("g").unwrap(), Config::default(), T0);
    let as_member = |conn: u64, member: Member| Inbound::Join {
        conn: ConnId(conn),
        encoding: Encoding::Json,
        member: Some(Arc::new(member)),
        session: None,
    };
    g.handle(Event::Message(
        T0,
        as_member(1, Member::new("Eve", "banned")),
    ));
    let refused = drain(&mut g);
    assert!(
        matches!(
            &refused[..],
            [
                Action::Refused {
                    conn: ConnId(1),
                    code: "forbidden",
                },
                Action::Send {
                    conn: ConnId(1),
                    ..
                },
                Action::Close {
                    conn: ConnId(1),
                    code: CLOSE_POLICY,
                    ..
                }
            ]
        ),
        "{refused:?}"
    );
    let Action::Send { frame, .. } = &refused[1] else {
        unreachable!()
    };
    let error = protocol::decode::<ServerMsg<(), Guarded>>(frame).unwrap();
    assert!(matches!(error, ServerMsg::Error { code, .. } if code == "forbidden"));

    g.handle(Event::Message(
        T0,
        as_member(2, Member::new("Ada", "player")),
    ));
    let op = |conn: u64, member: Member| Inbound::Frame {
        conn: ConnId(conn),
        frame: protocol::encode(&ClientMsg::<_>::Op { id: 1, op: () }, Encoding::Json).unwrap(),
        member: Some(Arc::new(member)),
        session: None,
    };
    // A joined connection acts as the member it joined as, whatever its
    // frame says; one that never joined here (its gathering dispersed
    // while the frame was on its way) as its frame's.
    g.handle(Event::Message(
        T0,
        op(2, Member::new("Mallory", "organizer")),
    ));
    g.handle(Event::Message(T0, op(3, Member::new("Bob", "player"))));
    drain(&mut g);
    assert_eq!(g.app().0, ["Ada", "Bob"]);
}

#[test]
fn ops_over_the_rate_are_refused_and_a_flood_is_closed() {
    let mut g = gathering(Config {
        max_ops_per_sec: 10,
        op_burst: 3,
        ..Config::default()
    });
    join(&mut g, T0, 1);
    drain(&mut g);
    let codes = |actions: &[Action]| {
        errors(actions)
            .into_iter()
            .map(|(_, _, code)| code)
            .collect::<Vec<_>>()
    };
    // A burst of three goes; the fourth, at the same instant, does not.
    for i in 1..=4 {
        send(&mut g, T0, 1, register(i, &format!("p{i}")), Encoding::Json);
    }
    let actions = drain(&mut g);
    assert_eq!(codes(&actions), ["rate_limited"]);
    assert_eq!(refusals(&actions), ["rate_limited"], "counted for the host");
    assert_eq!(g.app().players.len(), 3, "the refused op was not applied");
    // A fetch draws on the same tokens: it costs at least an op's work.
    send(&mut g, T0, 1, ClientMsg::Fetch { id: 9 }, Encoding::Json);
    assert_eq!(
        errors(&drain(&mut g)),
        [(1, Some(9), "rate_limited".into())]
    );
    // 100 ms refill one op at 10 a second.
    send(
        &mut g,
        T0 + Duration::from_millis(100),
        1,
        register(5, "p5"),
        Encoding::Json,
    );
    assert_eq!(codes(&drain(&mut g)), Vec::<String>::new());
    // Going on regardless: refused, then closed once past a burst in a row.
    let at = T0 + Duration::from_millis(100);
    for i in 6..=9 {
        send(&mut g, at, 1, register(i, &format!("p{i}")), Encoding::Json);
    }
    let actions = drain(&mut g);
    assert_eq!(codes(&actions).len(), 4);
    assert_eq!(
        refusals(&actions),
        [
            "rate_limited",
            "rate_limited",
            "rate_limited",
            "rate_limited",
            "flood"
        ]
    );
    // Closed once its accepted ops are durable and acked, not before.
    let closes = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Close { .. }))
            .count()
    };
    assert_eq!(closes(&actions), 0, "closed with acks owed");
    let mut actions = Vec::new();
    while g.durable_seq() < g.seq() {
        g.handle(Event::Persisted(at, u64::MAX));
        actions.extend(drain(&mut g));
    }
    let acked: Vec<u64> = sends(&actions)
        .into_iter()
        .filter_map(|(_, msg, _)| match msg {
            ServerMsg::Ack { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [1, 2, 3, 5]);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Close {
                conn: ConnId(1),
                code: CLOSE_POLICY,
                ..
            }
        )),
        "{actions:?}"
    );
}

#[test]
fn a_join_past_the_connection_bound_is_closed_with_1013() {
    let mut g = gathering(Config {
        max_connections: 2,
        ..Config::default()
    });
    for conn in 1..=3 {
        join(&mut g, T0, conn);
    }
    let actions = drain(&mut g);
    assert!(
        matches!(
            &actions[..],
            [
                Action::Refused {
                    conn: ConnId(3),
                    code: "full",
                },
                Action::Close {
                    conn: ConnId(3),
                    code: 1013,
                    ..
                }
            ]
        ),
        "{actions:?}"
    );
    // One leaves: the next fits.
    g.handle(Event::Message(
        T0,
        Inbound::Leave {
            conn: ConnId(1),
            clean: false,
        },
    ));
    join(&mut g, T0, 4);
    assert!(
        drain(&mut g)
            .iter()
            .all(|a| !matches!(a, Action::Close { .. }))
    );
}

#[test]
fn an_evicted_gathering_asks_the_hall_then_disperses_like_an_idle_one() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    drain(&mut g);
    g.handle(Event::Persisted(T0, 1));
    drain(&mut g);
    g.handle(Event::Evict(T0));
    let asked = drain(&mut g);
    assert!(
        matches!(
            &asked[..],
            [Action::Disperse {
                reason: DisperseReason::Evicted,
                ..
            }]
        ),
        "{asked:?}"
    );
    // Refused (traffic on its way): it lives on, and only asks again if told.
    g.handle(Event::Verdict(T0, Verdict::Refused));
    assert!(drain(&mut g).is_empty());
    assert_eq!(g.phase(), Phase::Live);
    g.handle(Event::Evict(T0));
    drain(&mut g);
    g.handle(Event::Verdict(T0, Verdict::Granted));
    let actions = drain(&mut g);
    let told = sends(&actions);
    assert_eq!(
        told.iter()
            .map(|(c, m, _)| (*c, m.clone()))
            .collect::<Vec<_>>(),
        [(
            1,
            Server::Dispersed {
                reason: DisperseReason::Evicted
            }
        )]
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Close {
                code: CLOSE_DISPERSED,
                ..
            }
        )),
        "{actions:?}"
    );
}

#[test]
fn a_handoff_persists_asks_again_after_a_refusal_and_tells_clients_to_join_elsewhere() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    g.handle(Event::Persisted(T0, 1));
    drain(&mut g);
    g.handle(Event::Handoff(T0));
    let asked = drain(&mut g);
    assert!(
        matches!(
            &asked[..],
            [Action::Disperse {
                reason: DisperseReason::Moved,
                ..
            }]
        ),
        "{asked:?}"
    );
    // Refused (traffic on its way): unlike an eviction, it asks again once
    // that traffic is handled.
    g.handle(Event::Verdict(T0, Verdict::Refused));
    assert!(drain(&mut g).is_empty());
    send(&mut g, T0, 1, register(2, "Bob"), Encoding::Json);
    let actions = drain(&mut g);
    assert_eq!(persist(&actions), Some(2));
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Disperse {
                reason: DisperseReason::Moved,
                ..
            }
        )),
        "{actions:?}"
    );
    // Granted: the goodbye waits for Bob's op to be durable.
    g.handle(Event::Verdict(T0, Verdict::Granted));
    let actions = drain(&mut g);
    assert!(
        sends(&actions)
            .iter()
            .all(|(_, m, _)| !matches!(m, ServerMsg::Dispersed { .. }))
    );
    g.handle(Event::Persisted(T0, 2));
    let actions = drain(&mut g);
    assert!(sends(&actions).iter().any(|(c, m, _)| *c == 1
        && *m
            == ServerMsg::Dispersed {
                reason: DisperseReason::Moved
            }));
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Close {
                code: protocol::CLOSE_MOVED,
                ..
            }
        )),
        "{actions:?}"
    );
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Moved
        })
    );
}

#[test]
fn a_fenced_commit_acks_nothing_and_sends_clients_to_the_new_owner() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    g.handle(Event::Fenced(T0));
    let actions = drain(&mut g);
    assert_eq!(errors(&actions), [(1, Some(1), "not_durable".to_string())]);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Disperse {
                reason: DisperseReason::Moved,
                ..
            }
        )),
        "{actions:?}"
    );
    assert_eq!(g.seq(), 0, "the op was not kept here");
    g.handle(Event::Verdict(T0, Verdict::Granted));
    let actions = drain(&mut g);
    assert_eq!(persist(&actions), None, "nothing more is written here");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Close {
                code: protocol::CLOSE_MOVED,
                ..
            }
        )),
        "{actions:?}"
    );
}

#[test]
fn fenced_during_a_shutdown_the_clients_are_sent_on_rather_than_told_it_stopped() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    g.handle(Event::Shutdown(T0));
    drain(&mut g);
    g.handle(Event::Fenced(T0));
    let actions = drain(&mut g);
    assert_eq!(
        actions.last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Moved
        })
    );
}

#[test]
fn refused_while_it_must_leave_it_asks_again_at_its_next_tick_without_waiting_for_traffic() {
    let mut g = gathering(Config::default());
    join(&mut g, T0, 1);
    send(&mut g, T0, 1, register(1, "Ada"), Encoding::Json);
    assert_eq!(persist(&drain(&mut g)), Some(1));
    // Fenced, and in the same batch of mail the last client leaves: the
    // request the host carries out after the batch counts too few
    // messages, and is refused.
    g.handle(Event::Fenced(T0));
    g.handle(Event::Message(
        T0,
        Inbound::Leave {
            conn: ConnId(1),
            clean: true,
        },
    ));
    drain(&mut g);
    g.handle(Event::Verdict(T0, Verdict::Refused));
    assert!(drain(&mut g).is_empty());
    // Nothing else will come; it does not wait for it.
    let due = g.next_deadline().expect("a deadline");
    assert_eq!((due.at, due.why), (T0, Why::Leave));
    g.handle(Event::Tick(T0));
    let asked = drain(&mut g);
    assert!(
        matches!(
            &asked[..],
            [Action::Disperse {
                reason: DisperseReason::Moved,
                ..
            }]
        ),
        "{asked:?}"
    );
    g.handle(Event::Verdict(T0, Verdict::Granted));
    assert_eq!(
        drain(&mut g).last(),
        Some(&Action::Dispersed {
            reason: DisperseReason::Moved
        })
    );
}
