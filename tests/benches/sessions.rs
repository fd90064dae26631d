//! What sessions cost and save, on a fake clock, in one process:
//! - bytes one remembered session adds to a snapshot, with 1 and with 256
//!   ops remembered;
//! - a client back after 1,000 missed ops: resumed op by op (`forward`s)
//!   against sent the whole state (`resync`), time and bytes, the
//!   tournament's state grown to 10,000 results;
//! - presence fan-out: 100 members each updating 20 times a second,
//!   messages and bytes sent a second, and time per update.
//!
//! `cargo bench -p gathering-tests --bench sessions`; `BENCH_SMOKE=1`
//! makes it a seconds-long smoke run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant as Clock;

use gathering_core::protocol::{ClientMsg, Encoding, encode};
use gathering_core::tournament::{Tournament, TournamentOp, TournamentPresence};
use gathering_core::{
    Action, Commit, Config, ConnId, Duration, Event, Gathering, GatheringId, Inbound, Instant,
    SessionId, SessionJoin,
};

fn smoke() -> bool {
    std::env::var_os("BENCH_SMOKE").is_some()
}

fn gathering(config: Config) -> Gathering<Tournament> {
    let mut g = Gathering::new(GatheringId::parse("g").unwrap(), config, Instant::ZERO);
    g.offer_epoch(7);
    g
}

/// Carries out every action: commits are durable at once. Returns the
/// frames sent (count, bytes) and the last commit.
fn drain(g: &mut Gathering<Tournament>, now: Instant) -> (usize, usize, Option<Commit>) {
    let (mut frames, mut bytes, mut last) = (0, 0, None);
    while let Some(action) = g.poll_action() {
        match action {
            Action::Send { frame, .. } => {
                frames += 1;
                bytes += frame.len();
            }
            Action::Persist(commit) => {
                g.handle(Event::Persisted(now, commit.seq));
                last = Some(commit);
            }
            _ => {}
        }
    }
    (frames, bytes, last)
}

fn join(
    g: &mut Gathering<Tournament>,
    now: Instant,
    conn: u64,
    session: &str,
    since: Option<u64>,
    epoch: u64,
) {
    let join = Inbound::Join {
        conn: ConnId(conn),
        encoding: Encoding::Postcard,
        member: None,
        session: Some(Box::new(SessionJoin {
            session: SessionId::parse(session).unwrap(),
            since,
            epoch: Some(epoch),
        })),
    };
    g.handle(Event::Message(now, join));
}

fn send(
    g: &mut Gathering<Tournament>,
    now: Instant,
    conn: u64,
    msg: &ClientMsg<TournamentOp, TournamentPresence>,
) {
    let frame = encode(msg, Encoding::Postcard).unwrap();
    g.handle(Event::Message(
        now,
        Inbound::open_frame(ConnId(conn), frame),
    ));
}

fn op(id: u64, op: TournamentOp) -> ClientMsg<TournamentOp, TournamentPresence> {
    ClientMsg::Op { id, op }
}

fn a_beats_b() -> TournamentOp {
    TournamentOp::RecordResult {
        a: "a".into(),
        b: "b".into(),
        winner: Some("a".into()),
    }
}

/// Snapshot bytes with `sessions` sessions of `ops` ops each, less those
/// of the state alone.
fn snapshot_bytes(sessions: u64, ops: u64) -> usize {
    let config = Config {
        snapshot_ops: u32::MAX,
        snapshot_bytes: u32::MAX,
        ..Config::default()
    };
    let mut g = gathering(config);
    let now = Instant::ZERO;
    g.handle(Event::Message(
        now,
        Inbound::open_join(ConnId(1_000), Encoding::Postcard),
    ));
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let register = op(
            i as u64 + 1,
            TournamentOp::RegisterPlayer { name: name.into() },
        );
        send(&mut g, now, 1_000, &register);
    }
    for s in 0..sessions {
        join(&mut g, now, s + 1, &format!("session-{s:04}"), None, 7);
        for i in 1..=ops {
            send(&mut g, now, s + 1, &op(i, a_beats_b()));
        }
        drain(&mut g, now);
    }
    // A shutdown with an op not yet written writes a snapshot.
    send(&mut g, now, 1_000, &op(3, a_beats_b()));
    g.handle(Event::Shutdown(now));
    let (_, _, last) = drain(&mut g, now);
    let snapshot = last.and_then(|c| c.snapshot).expect("a final snapshot");
    snapshot.len() - postcard::to_allocvec(g.app()).unwrap().len()
}

fn remembered_sessions() {
    println!("\n== bytes one remembered session adds to a snapshot");
    let n = if smoke() { 4 } else { 64 };
    for ops in [1u64, 16, 256] {
        let per = snapshot_bytes(n, ops) as f64 / n as f64;
        println!("{n} sessions of {ops:>3} ops remembered: {per:.1} B per session");
    }
}

fn resume() {
    let (results, missed) = if smoke() { (200, 100) } else { (10_000, 1_000) };
    println!(
        "\n== a client back after {missed} missed ops, the state holding {results} results (postcard)"
    );
    let config = Config {
        resume_ops: 1024,
        ..Config::default()
    };
    let mut g = gathering(config);
    let mut now = Instant::ZERO;
    join(&mut g, now, 1, "writer", None, 7);
    send(
        &mut g,
        now,
        1,
        &op(1, TournamentOp::RegisterPlayer { name: "a".into() }),
    );
    send(
        &mut g,
        now,
        1,
        &op(2, TournamentOp::RegisterPlayer { name: "b".into() }),
    );
    for i in 0..results {
        send(&mut g, now, 1, &op(3 + i, a_beats_b()));
        if i % 64 == 0 {
            drain(&mut g, now);
        }
    }
    drain(&mut g, now);
    let seq = g.seq();
    let rounds = if smoke() { 3 } else { 21 };
    for (what, epoch) in [("resumed op by op", 7), ("resync (whole state)", 8)] {
        let mut times = Vec::new();
        let mut sent = (0, 0);
        for r in 0..rounds {
            now = now + Duration::from_millis(1);
            let conn = 100 + r as u64 * 2 + epoch;
            let t = Clock::now();
            join(
                &mut g,
                now,
                conn,
                &format!("reader-{epoch}-{r}"),
                Some(seq - missed),
                epoch,
            );
            let (frames, bytes, _) = drain(&mut g, now);
            times.push(t.elapsed().as_secs_f64());
            sent = (frames, bytes);
            g.handle(Event::Message(
                now,
                Inbound::Leave {
                    conn: ConnId(conn),
                    clean: true,
                },
            ));
            drain(&mut g, now);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{what:<22}: median {:>8.1} µs, {} frames, {} bytes",
            times[times.len() / 2] * 1e6,
            sent.0,
            sent.1
        );
    }
}

fn presence() {
    let (members, secs) = if smoke() { (10, 1) } else { (100, 10) };
    println!(
        "\n== presence: {members} members each updating 20 times a second for {secs} s (postcard)"
    );
    let mut g = gathering(Config::default());
    let mut now = Instant::ZERO;
    for m in 0..members {
        join(&mut g, now, m + 1, &format!("m{m}"), None, 7);
    }
    drain(&mut g, now);
    let (mut frames, mut bytes, mut updates) = (0, 0, 0u64);
    let t = Clock::now();
    // Each member updates every 50 ms, the members spread over the 50 ms.
    let steps = secs * 20 * members;
    for step in 0..steps {
        now = Instant::from_nanos(step * 50_000_000 / members + 1);
        let m = step % members;
        let data = TournamentPresence {
            looking_at: Some(format!("p{}", step % 7)),
        };
        send(&mut g, now, m + 1, &ClientMsg::Presence { data });
        updates += 1;
        g.handle(Event::Tick(now));
        let (f, b, _) = drain(&mut g, now);
        frames += f;
        bytes += b;
    }
    let elapsed = t.elapsed().as_secs_f64();
    println!(
        "{updates} updates: {:.0} messages and {:.0} KiB sent a second; {:.2} µs of CPU per update ({:.1} messages per update)",
        frames as f64 / secs as f64,
        bytes as f64 / secs as f64 / 1024.0,
        elapsed / updates as f64 * 1e6,
        frames as f64 / updates as f64
    );
}

fn main() {
    remembered_sessions();
    resume();
    presence();
}
