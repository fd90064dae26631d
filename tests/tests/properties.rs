//! Property tests: random interleavings of joins, leaves, ops, fetches, acks,
//! garbage, storage completions and failures, hall turns and clock jumps, with
//! the invariants of `gathering_tests::sim` checked after every step and at the
//! end, once everything has dispersed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::Config;
use gathering_tests::clients::ids;
use gathering_tests::harness::{Step, steps};
use gathering_tests::sim::Sim;
use gathering_tests::{check, configs, drawn, racing_config};
use proptest::prelude::*;

/// The simulation's own steps.
#[derive(Clone, Debug)]
enum Own {
    /// Gathering `IDS[g]` takes its oldest mail.
    Deliver { g: usize },
    /// Gathering `IDS[g]` is ticked now, due or not.
    TickEarly { g: usize },
}

/// A step; clock jumps are up to `max_ms` long.
fn step(max_ms: u64) -> impl Strategy<Value = Step<Own>> {
    let g = || 0..gathering_tests::clients::IDS.len();
    let deliver = g().prop_map(|g| Own::Deliver { g }).boxed();
    let early = g().prop_map(|g| Own::TickEarly { g }).boxed();
    steps(max_ms, vec![(6, deliver), (1, early)])
}

fn run(config: Config, steps: &[Step<Own>]) -> Sim {
    let ids = ids();
    let mut sim = Sim::new(config);
    for step in steps {
        match step.take(&mut sim, &ids) {
            Some(Own::Deliver { g }) => _ = sim.step_gathering(&ids[*g]),
            Some(Own::TickEarly { g }) => sim.tick(&ids[*g]),
            None => {}
        }
    }
    sim.run_until_all_dispersed();
    sim.check_final();
    sim
}

/// Every invariant holds in every interleaving.
#[test]
fn nothing_is_lost_and_dispersal_is_exact() {
    let runs = (configs(), prop::collection::vec(step(4_000), 1..120));
    check(6_000, runs, |(config, steps)| {
        run(config, &steps);
    });
}

/// Same, with dispersal racing traffic as often as possible: a short idle
/// timeout and many small clock jumps, commits overlapping or not.
#[test]
fn dispersal_races_new_traffic() {
    let runs = (prop::collection::vec(step(400), 1..80), any::<bool>());
    check(4_000, runs, |(steps, overlap_commits)| {
        run(
            Config {
                overlap_commits,
                ..racing_config()
            },
            &steps,
        );
    });
}

/// The generators reach the paths the properties are about; a property that
/// never sees a refusal or a respawn would prove little.
#[test]
fn generated_runs_exercise_the_races() {
    let mut total = gathering_tests::Counts::default();
    for (config, steps) in drawn(step(4_000), 300) {
        let sim = run(config, &steps);
        total.add(&sim.stats);
        total.add(&sim.clients.stats);
    }
    println!("{total:?}");
    let least = [("dispersals", 101), ("refusals", 1), ("respawns", 1)];
    total.assert_at_least(&least);
    total.assert_at_least(&[("resends", 1), ("rejections", 1), ("overlapped_commits", 1)]);
    total.assert_at_least(&[("unwritten_after_failure", 1)]);
}
