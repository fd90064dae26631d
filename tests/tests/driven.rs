//! Property tests of the real driver under a fake runtime: random
//! interleavings of joins, leaves, ops, fetches, acks, garbage, loads and
//! writes that finish, fail or stall, and clock jumps, with the invariants
//! of `gathering_tests::driven` checked as the driver acts and at the end
//! (after every gathering dispersed, or after a shutdown).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::Config;
use gathering_tests::Counts;
use gathering_tests::clients::ids;
use gathering_tests::driven::Driven;
use gathering_tests::harness::{Step, steps};
use gathering_tests::{check, configs, drawn, racing_config};
use proptest::prelude::*;

/// The driven harness's own steps.
#[derive(Clone, Debug)]
enum Own {
    /// Timers that fire take in-flight traffic to the hall, or not.
    Race(bool),
    /// The oldest load finishes.
    Load,
}

/// A step; clock jumps are up to `max_ms` long.
fn step(max_ms: u64) -> impl Strategy<Value = Step<Own>> {
    let race = any::<bool>().prop_map(Own::Race).boxed();
    steps(max_ms, vec![(1, race), (3, Just(Own::Load).boxed())])
}

fn run(config: Config, steps: &[Step<Own>], shutdown: bool) -> Counts {
    let ids = ids();
    let mut d = Driven::new(config);
    for step in steps {
        match step.take(&mut d, &ids) {
            Some(Own::Race(on)) => d.world.race.set(*on),
            Some(Own::Load) => _ = d.step_load(),
            None => {}
        }
    }
    if shutdown {
        d.shutdown();
    } else {
        d.run_until_all_dispersed();
    }
    d.check_final(shutdown);
    let mut counts = d.world.stats.borrow().clone();
    counts.add(&d.world.clients.borrow().stats);
    counts
}

/// Every invariant holds in every interleaving, ending in dispersal.
#[test]
fn the_driver_loses_nothing_and_disperses_exactly() {
    let runs = (configs(), prop::collection::vec(step(4_000), 1..120));
    check(6_000, runs, |(config, steps)| {
        run(config, &steps, false);
    });
}

/// Same, with dispersal racing traffic (short timeouts, small jumps),
/// ending half the time in a shutdown.
#[test]
fn the_driver_under_racing_dispersals_and_shutdowns() {
    let runs = (prop::collection::vec(step(400), 1..80), any::<bool>());
    check(4_000, runs, |(steps, shutdown)| {
        run(racing_config(), &steps, shutdown);
    });
}

/// The generators reach the paths the properties are about.
#[test]
fn generated_runs_exercise_the_driver() {
    let mut total = Counts::default();
    for (i, (config, steps)) in drawn(step(4_000), 300).enumerate() {
        total.add(&run(config, &steps, i % 2 == 0));
    }
    println!("{total:?}");
    let least = [("dispersals", 101), ("respawns", 1), ("acks", 101)];
    total.assert_at_least(&least);
    total.assert_at_least(&[("failed_writes", 1), ("unwritten_after_failure", 1)]);
}
