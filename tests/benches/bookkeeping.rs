//! Bookkeeping overhead of stale detection in the core, per message, and the
//! dispersal lateness each strategy achieves on a fake clock.
//!
//! One gathering, two connections, a stream of postcard `ack` frames: the
//! cheapest message a gathering processes, so detection's share of the
//! per-message cost is as large as it can be. Strategies, all driving the
//! same core:
//! - `none`: no stale detection at all (baseline): the host never asks for a
//!   deadline;
//! - `exact` (ours): the core's contract: the core writes a timestamp, the
//!   host compares `next_deadline()` with its one armed timer and re-arms
//!   only when a deadline is earlier (after a message, it never is); the
//!   host asks after every message (`exact`) or, as the native host does,
//!   after each mailbox batch of up to 64 (`exact/64`);
//! - `rearm`: a real tokio timer reset to `now + idle` on every message;
//! - `sweep`: nothing per message; a periodic sweep finds stale gatherings.
//!
//! `cargo bench -p gathering-tests --bench bookkeeping` prints divan's
//! per-message times, then a summary of interleaved runs with throughput
//! ratios against `none` and the lateness table. `BENCH_SMOKE=1` makes it a
//! seconds-long smoke run. `BENCH_ONLY=<strategy> BENCH_MESSAGES=<n>` runs
//! one strategy once, for instruction counts under callgrind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::pin::Pin;
use std::time::Duration as StdDuration;

use gathering_core::protocol::{ClientMsg, Encoding, encode};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    Action, Config, ConnId, Event, Frame, Gathering, GatheringId, Inbound, Instant, Phase, Verdict,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    None,
    Exact,
    ExactBatch,
    Rearm,
    Sweep,
}

const STRATEGIES: [Strategy; 5] = [
    Strategy::None,
    Strategy::Exact,
    Strategy::ExactBatch,
    Strategy::Rearm,
    Strategy::Sweep,
];

/// Messages a host handles per wake-up before it looks at the deadline in
/// `ExactBatch` (the native host's mailbox batch).
const BATCH: u64 = 64;

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::Exact => "exact",
            Strategy::ExactBatch => "exact/64",
            Strategy::Rearm => "rearm",
            Strategy::Sweep => "sweep",
        }
    }
}

fn smoke() -> bool {
    std::env::var_os("BENCH_SMOKE").is_some()
}

/// A gathering with two connections and the frame the bench feeds it.
fn setup() -> (Gathering<Tournament>, Frame) {
    let id = GatheringId::parse("bench").unwrap();
    let mut g = Gathering::new(id, Config::default(), Instant::ZERO);
    for conn in [1, 2] {
        g.handle(Event::Message(
            Instant::ZERO,
            Inbound::open_join(ConnId(conn), Encoding::Postcard),
        ));
    }
    while g.poll_action().is_some() {}
    let frame = encode(
        &ClientMsg::<TournamentOp>::Ack { seq: 0 },
        Encoding::Postcard,
    )
    .unwrap();
    (g, frame)
}

/// Feeds `n` messages, 1 µs apart, under `strategy`; returns the final time.
fn run(strategy: Strategy, n: u64, rt: &tokio::runtime::Runtime) -> Instant {
    let (mut g, frame) = setup();
    let _guard = rt.enter();
    let base = tokio::time::Instant::now();
    let idle = g.config().idle_timeout;
    let mut sleep: Pin<Box<tokio::time::Sleep>> = Box::pin(tokio::time::sleep(idle));
    let mut armed = g.next_deadline().map(|d| d.at);
    let mut now = Instant::ZERO;
    for i in 1..=n {
        now = Instant::from_nanos(i * 1_000);
        g.handle(Event::Message(
            now,
            Inbound::open_frame(ConnId(1), frame.clone()),
        ));
        while let Some(a) = g.poll_action() {
            black_box(a);
        }
        match strategy {
            Strategy::None | Strategy::Sweep => {}
            Strategy::ExactBatch if i % BATCH != 0 => {}
            Strategy::Exact | Strategy::ExactBatch => {
                if let Some(d) = g.next_deadline()
                    && armed.is_none_or(|at| d.at < at)
                {
                    armed = Some(d.at);
                    sleep
                        .as_mut()
                        .reset(base + StdDuration::from_nanos(d.at.as_nanos()));
                }
            }
            Strategy::Rearm => {
                let at = now + idle;
                sleep
                    .as_mut()
                    .reset(base + StdDuration::from_nanos(at.as_nanos()));
            }
        }
    }
    black_box(&sleep);
    black_box(armed);
    now
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

const PER_ITER: u64 = 1_000;

#[divan::bench(args = STRATEGIES)]
fn per_1000_messages(bencher: divan::Bencher, strategy: Strategy) {
    let rt = runtime();
    bencher.bench_local(|| run(strategy, PER_ITER, &rt));
}

/// Dispersal lateness on a fake clock: `n` gatherings whose last message
/// falls at a random instant; each strategy ticks the real core when its
/// timer or sweep would, and the lateness is the tick that dispersed it
/// minus its deadline.
fn lateness(strategy: Strategy, n: usize, seed: u64) -> Vec<StdDuration> {
    const SWEEP: StdDuration = StdDuration::from_secs(60);
    let mut rng = seed;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut g, frame) = setup();
        // Last activity somewhere in the first hour, to the nanosecond.
        let last = Instant::from_nanos(splitmix(&mut rng) % 3_600_000_000_000);
        g.handle(Event::Message(last, Inbound::open_frame(ConnId(1), frame)));
        while g.poll_action().is_some() {}
        let due = last + g.config().idle_timeout;
        let tick = match strategy {
            // The one timer, at the core's deadline.
            Strategy::Exact | Strategy::ExactBatch => g.next_deadline().map_or(due, |d| d.at),
            // The re-armed timer, at the last message plus the timeout.
            Strategy::Rearm | Strategy::None => due,
            // The first sweep at or after the deadline.
            Strategy::Sweep => {
                let q = SWEEP.as_nanos() as u64;
                Instant::from_nanos(due.as_nanos().div_ceil(q) * q)
            }
        };
        // A tick one nanosecond before the deadline must change nothing.
        g.handle(Event::Tick(Instant::from_nanos(due.as_nanos() - 1)));
        assert_eq!(g.phase(), Phase::Live, "{strategy:?} dispersed early");
        g.handle(Event::Tick(tick));
        let mut asked = false;
        while let Some(a) = g.poll_action() {
            asked |= matches!(a, Action::Disperse { .. });
        }
        assert!(asked, "{strategy:?}: no dispersal at its tick");
        g.handle(Event::Verdict(tick, Verdict::Granted));
        out.push(tick.saturating_since(due));
    }
    out.sort();
    out
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[StdDuration], p: f64) -> StdDuration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Interleaved runs of every strategy (so drift hits all alike); median
/// messages per second of each, and its ratio to the baseline.
fn summary() {
    let rt = runtime();
    let (n, rounds) = if smoke() {
        (20_000, 3)
    } else {
        (2_000_000, 11)
    };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); STRATEGIES.len()];
    for _ in 0..rounds {
        for (i, s) in STRATEGIES.iter().enumerate() {
            let t = std::time::Instant::now();
            black_box(run(*s, n, &rt));
            rates[i].push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    let base = medians[0];
    println!(
        "\nbookkeeping summary: {n} postcard acks through one gathering, median of {rounds} interleaved rounds"
    );
    println!(
        "{:<8} {:>14} {:>10} {:>14}",
        "strategy", "messages/s", "ns/msg", "vs none"
    );
    for (s, m) in STRATEGIES.iter().zip(&medians) {
        println!(
            "{:<8} {:>14.0} {:>10.1} {:>13.2}%",
            s.name(),
            m,
            1e9 / m,
            (m / base - 1.0) * 100.0
        );
    }
    let gatherings = if smoke() { 200 } else { 10_000 };
    println!(
        "\ndispersal lateness on the fake clock, {gatherings} gatherings, idle timeout 24 h, sweep quantum 60 s"
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12}",
        "strategy", "p50", "p99", "max"
    );
    for s in [Strategy::Exact, Strategy::Rearm, Strategy::Sweep] {
        let l = lateness(s, gatherings, 0x6761_7468);
        println!(
            "{:<8} {:>12?} {:>12?} {:>12?}",
            s.name(),
            pct(&l, 0.5),
            pct(&l, 0.99),
            pct(&l, 1.0)
        );
    }
}

fn main() {
    // `BENCH_ONLY=exact BENCH_MESSAGES=n`: one run of one strategy and
    // nothing else, for counting instructions under callgrind.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let s = STRATEGIES
            .into_iter()
            .find(|s| s.name() == only)
            .unwrap_or_else(|| panic!("BENCH_ONLY: one of none, exact, exact/64, rearm, sweep"));
        let n = std::env::var("BENCH_MESSAGES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000);
        black_box(run(s, n, &runtime()));
        return;
    }
    if smoke() {
        divan::Divan::from_args()
            .sample_count(3)
            .sample_size(1)
            .main();
    } else {
        divan::main();
    }
    summary();
}
