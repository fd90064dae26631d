//! Property tests of the real driver under a fake runtime: random
//! interleavings of joins, leaves, ops, fetches, acks, garbage, loads and
//! writes that finish, fail or stall, and clock jumps, with the invariants
//! of `gathering_tests::driven` checked as the driver acts and at the end
//! (after every gathering dispersed, or after a shutdown).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::{Config, Duration, Encoding, GatheringId};
use gathering_tests::driven::{Driven, Stats};
use gathering_tests::{configs, pick, proptest_config, racing_config};
use proptest::prelude::*;

const IDS: [&str; 3] = ["g0", "g1", "g2"];

#[derive(Clone, Debug)]
enum Step {
    Join { g: usize, binary: bool },
    Leave { c: usize },
    Op { c: usize, valid: bool },
    Fetch { c: usize },
    Ack { c: usize },
    Garbage { c: usize },
    Hall,
    Race(bool),
    Load,
    Store { fail: bool },
    Advance { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..IDS.len(), any::<bool>()).prop_map(|(g, binary)| Step::Join { g, binary }),
        1 => any::<usize>().prop_map(|c| Step::Leave { c }),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(c, valid)| Step::Op { c, valid }),
        1 => any::<usize>().prop_map(|c| Step::Fetch { c }),
        2 => any::<usize>().prop_map(|c| Step::Ack { c }),
        1 => any::<usize>().prop_map(|c| Step::Garbage { c }),
        6 => Just(Step::Hall),
        1 => any::<bool>().prop_map(Step::Race),
        3 => Just(Step::Load),
        4 => prop::bool::weighted(0.15).prop_map(|fail| Step::Store { fail }),
        3 => (0u64..4_000).prop_map(|ms| Step::Advance { ms }),
    ]
}

fn run(config: Config, steps: &[Step], shutdown: bool) -> Stats {
    let ids: Vec<GatheringId> = IDS.iter().map(|s| GatheringId::parse(s).unwrap()).collect();
    let mut d = Driven::new(config);
    for step in steps {
        let open = d.open_clients();
        match *step {
            Step::Join { g, binary } => {
                let enc = if binary {
                    Encoding::Postcard
                } else {
                    Encoding::Json
                };
                d.join(&ids[g], enc);
            }
            Step::Leave { c } => pick(&open, c).into_iter().for_each(|c| d.leave(c)),
            Step::Op { c, valid } => pick(&open, c).into_iter().for_each(|c| d.op(c, valid)),
            Step::Fetch { c } => pick(&open, c).into_iter().for_each(|c| d.fetch(c)),
            Step::Ack { c } => pick(&open, c).into_iter().for_each(|c| d.ack(c)),
            Step::Garbage { c } => pick(&open, c).into_iter().for_each(|c| d.garbage(c)),
            Step::Hall => {
                d.step_hall();
            }
            Step::Race(on) => d.world.race.set(on),
            Step::Load => {
                d.step_load();
            }
            Step::Store { fail } => {
                d.step_write(fail);
            }
            Step::Advance { ms } => d.advance(Duration::from_millis(ms)),
        }
    }
    if shutdown {
        d.shutdown();
    } else {
        d.run_until_all_dispersed();
    }
    d.check_final(shutdown);
    d.world.stats.borrow().clone()
}

proptest! {
    #![proptest_config(proptest_config(6_000))]

    /// Every invariant holds in every interleaving, ending in dispersal.
    #[test]
    fn the_driver_loses_nothing_and_disperses_exactly(
        config in configs(),
        steps in prop::collection::vec(step(), 1..120),
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
        steps in prop::collection::vec(step(), 1..80),
        shutdown in any::<bool>(),
    ) {
        let config = racing_config();
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|s| match s {
                Step::Advance { ms } => Step::Advance { ms: ms % 400 },
                other => other,
            })
            .collect();
        run(config, &steps, shutdown);
    }
}

/// The generators reach the paths the properties are about.
#[test]
fn generated_runs_exercise_the_driver() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(proptest_config(1));
    let mut total = Stats::default();
    for i in 0..300 {
        let config = configs().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(step(), 1..120)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let s = run(config, &steps, i % 2 == 0);
        total.dispersals += s.dispersals;
        total.respawns += s.respawns;
        total.failed_writes += s.failed_writes;
        total.unwritten_after_failure += s.unwritten_after_failure;
        total.acks += s.acks;
    }
    println!("{total:?}");
    assert!(total.dispersals > 100, "{total:?}");
    assert!(total.respawns > 0, "{total:?}");
    assert!(total.failed_writes > 0, "{total:?}");
    assert!(total.unwritten_after_failure > 0, "{total:?}");
    assert!(total.acks > 100, "{total:?}");
}
