//! What a crowd fetching one large state costs the gathering: 1,000
//! connections (half JSON, half postcard) each fetch a tournament of 1,000
//! players and 50,000 results, all at the same seq, through the core.
//! Prints the time per fetch and the bytes each reply carries.
//!
//! `cargo bench -p gathering-tests --bench fetch`; `BENCH_SMOKE=1` makes it
//! a seconds-long smoke run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gathering_core::protocol::{ClientMsg, Encoding, encode};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    Action, Config, ConnId, Event, Gathering, GatheringId, Inbound, Instant, Loaded, Snapshot,
};

fn main() {
    let smoke = std::env::var_os("BENCH_SMOKE").is_some();
    let (players, results, crowd, rounds) = if smoke {
        (100, 1_000, 50, 1)
    } else {
        (1_000, 50_000, 1_000, 5)
    };
    let mut state = Tournament::default();
    let name = |i: usize| format!("player-{i:04}");
    for i in 0..players {
        let op = TournamentOp::RegisterPlayer { name: name(i) };
        gathering_core::App::apply(&mut state, &gathering_core::Member::open(ConnId(1)), &op)
            .unwrap();
    }
    for i in 0..results {
        let op = TournamentOp::RecordResult {
            a: name(i % players),
            b: name((i + 1) % players),
            winner: Some(name(i % players)),
        };
        gathering_core::App::apply(&mut state, &gathering_core::Member::open(ConnId(1)), &op)
            .unwrap();
    }
    let bytes = postcard::to_allocvec(&state).unwrap();
    let now = Instant::from_millis(1_000);
    let mut g = Gathering::<Tournament>::restore(
        GatheringId::parse("crowd").unwrap(),
        Config::default(),
        now,
        &Loaded {
            snapshot: Some(Snapshot {
                seq: (players + results) as u64,
                bytes,
            }),
            log: Vec::new(),
        },
    )
    .unwrap();
    let encoding = |c: u64| {
        if c.is_multiple_of(2) {
            Encoding::Json
        } else {
            Encoding::Postcard
        }
    };
    for c in 0..crowd {
        let join = Inbound::open_join(ConnId(c), encoding(c));
        g.handle(Event::Message(now, join));
    }
    while g.poll_action().is_some() {}
    let mut times = Vec::new();
    let mut sent = 0usize;
    for round in 0..rounds {
        let frames: Vec<_> = (0..crowd)
            .map(|c| {
                let fetch = ClientMsg::<TournamentOp>::Fetch {
                    id: round * crowd + c,
                };
                encode(&fetch, encoding(c)).unwrap()
            })
            .collect();
        let t = std::time::Instant::now();
        sent = 0;
        for (c, frame) in (0..crowd).zip(frames) {
            g.handle(Event::Message(now, Inbound::open_frame(ConnId(c), frame)));
            while let Some(action) = g.poll_action() {
                if let Action::Send { frame, .. } = action {
                    sent += frame.len();
                }
            }
        }
        times.push(t.elapsed().as_secs_f64() / crowd as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "fetch crowd: {crowd} fetches of a tournament of {players} players and {results} results, \
         half JSON, half postcard, same seq; median of {rounds} rounds"
    );
    println!(
        "{:.1} us per fetch; {:.0} B per reply on average",
        times[times.len() / 2] * 1e6,
        sent as f64 / crowd as f64
    );
}
