//! Property tests of the real driver under a fake runtime: random
//! interleavings of joins, leaves, ops, fetches, acks, garbage, loads and
//! writes that finish, fail or stall, and clock jumps, with the invariants
//! of `gathering_tests::driven` checked as the driver acts and at the end
//! (after every gathering dispersed, or after a shutdown).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::{Config, Duration};
use gathering_tests::clients::{ClientStep, ids, steps};
use gathering_tests::driven::{Driven, Stats};
use gathering_tests::{configs, drawn, proptest_config, racing_config};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Client(ClientStep),
    Hall,
    Race(bool),
    Load,
    Store { fail: bool },
    Advance { ms: u64 },
}

/// A step; clock jumps are up to `max_ms` long.
fn step(max_ms: u64) -> impl Strategy<Value = Step> {
    steps(
        Step::Client,
        vec![
            (6, Just(Step::Hall).boxed()),
            (1, any::<bool>().prop_map(Step::Race).boxed()),
            (3, Just(Step::Load).boxed()),
            (
                4,
                prop::bool::weighted(0.15)
                    .prop_map(|fail| Step::Store { fail })
                    .boxed(),
            ),
            (3, (0..max_ms).prop_map(|ms| Step::Advance { ms }).boxed()),
        ],
    )
}

fn run(config: Config, steps: &[Step], shutdown: bool) -> (Stats, u64) {
    let ids = ids();
    let mut d = Driven::new(config);
    for step in steps {
        match step {
            Step::Client(step) => d.play(step, &ids),
            Step::Hall => {
                d.step_hall();
            }
            Step::Race(on) => d.world.race.set(*on),
            Step::Load => {
                d.step_load();
            }
            Step::Store { fail } => {
                d.step_write(*fail);
            }
            Step::Advance { ms } => d.advance(Duration::from_millis(*ms)),
        }
    }
    if shutdown {
        d.shutdown();
    } else {
        d.run_until_all_dispersed();
    }
    d.check_final(shutdown);
    let acks = d.world.clients.borrow().stats.acks;
    (d.world.stats.borrow().clone(), acks)
}

proptest! {
    #![proptest_config(proptest_config(6_000))]

    /// Every invariant holds in every interleaving, ending in dispersal.
    #[test]
    fn the_driver_loses_nothing_and_disperses_exactly(
        config in configs(),
        steps in prop::collection::vec(step(4_000), 1..120),
    ) {
        run(config, &steps, false);
    }
}

proptest! {
    #![proptest_config(proptest_config(4_000))]

    /// Same, with dispersal racing traffic (short timeouts, small jumps),
    /// ending half the time in a shutdown.
    #[test]
    fn the_driver_under_racing_dispersals_and_shutdowns(
        steps in prop::collection::vec(step(400), 1..80),
        shutdown in any::<bool>(),
    ) {
        let config = racing_config();
        run(config, &steps, shutdown);
    }
}

/// The generators reach the paths the properties are about.
#[test]
fn generated_runs_exercise_the_driver() {
    let mut total = Stats::default();
    let mut acks = 0;
    for (i, (config, steps)) in drawn(step(4_000), 300).enumerate() {
        let (s, a) = run(config, &steps, i % 2 == 0);
        acks += a;
        total.dispersals += s.dispersals;
        total.respawns += s.respawns;
        total.failed_writes += s.failed_writes;
        total.unwritten_after_failure += s.unwritten_after_failure;
    }
    println!("{total:?}, {acks} acks");
    assert!(total.dispersals > 100, "{total:?}");
    assert!(total.respawns > 0, "{total:?}");
    assert!(total.failed_writes > 0, "{total:?}");
    assert!(total.unwritten_after_failure > 0, "{total:?}");
    assert!(acks > 100, "{total:?}, {acks} acks");
}
