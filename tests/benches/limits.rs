//! What the op-rate limiter costs an op: a counter's ops through one
//! gathering on a fake clock, without a limit and with one never reached
//! (every op pays the bucket), interleaved, median of rounds.
//!
//! `cargo bench -p gathering-tests --bench limits`; `BENCH_SMOKE=1` makes
//! it a seconds-long smoke run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use gathering_core::protocol::{ClientMsg, Encoding, encode};
use gathering_core::{
    App, Config, ConnId, Event, Gathering, GatheringId, Inbound, Instant, Member, Rejection,
};

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Counter(u64);

impl App for Counter {
    const NAME: &'static str = "counter";
    type Op = u64;
    type Presence = ();
    fn apply(&mut self, _: &Member, op: &u64) -> Result<(), Rejection> {
        self.0 = self.0.wrapping_add(*op);
        Ok(())
    }
}

/// Seconds per op for `n` ops under `config`.
fn run(config: Config, n: u64) -> f64 {
    let mut g = Gathering::<Counter>::new(GatheringId::parse("c").unwrap(), config, Instant::ZERO);
    g.handle(Event::Message(
        Instant::ZERO,
        Inbound::open_join(ConnId(1), Encoding::Postcard),
    ));
    while g.poll_action().is_some() {}
    let frame = encode(&ClientMsg::<_>::Op { id: 1, op: 1u64 }, Encoding::Postcard).unwrap();
    let t = std::time::Instant::now();
    for i in 1..=n {
        let now = Instant::from_nanos(i * 1_000);
        g.handle(Event::Message(
            now,
            Inbound::open_frame(ConnId(1), frame.clone()),
        ));
        while let Some(a) = g.poll_action() {
            black_box(a);
        }
        // The commit the op asked for, made durable at once.
        g.handle(Event::Persisted(now, i));
        while let Some(a) = g.poll_action() {
            black_box(a);
        }
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let smoke = std::env::var_os("BENCH_SMOKE").is_some();
    let (n, rounds) = if smoke { (10_000, 1) } else { (500_000, 9) };
    let open = Config::default();
    let limited = Config {
        max_ops_per_sec: u32::MAX,
        op_burst: u32::MAX / 1000,
        ..Config::default()
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(run(open.clone(), n));
        b.push(run(limited.clone(), n));
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
    println!(
        "op rate limiter: {:.1} ns per op without, {:.1} ns with ({:+.1} ns, {:+.2} %), \
         median of {rounds} interleaved rounds of {n} ops",
        a * 1e9,
        b * 1e9,
        (b - a) * 1e9,
        (b / a - 1.0) * 100.0
    );
}
