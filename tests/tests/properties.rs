//! Property tests: random interleavings of joins, leaves, ops, fetches, acks,
//! garbage, storage completions and failures, hall turns and clock jumps, with
//! the invariants of `gathering_tests::sim` checked after every step and at the
//! end, once everything has dispersed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::{Config, Duration, Encoding, GatheringId};
use gathering_tests::sim::Sim;
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
    Deliver { g: usize },
    Store { fail: bool },
    Advance { ms: u64 },
    TickEarly { g: usize },
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
        6 => (0..IDS.len()).prop_map(|g| Step::Deliver { g }),
        3 => prop::bool::weighted(0.15).prop_map(|fail| Step::Store { fail }),
        3 => (0u64..4_000).prop_map(|ms| Step::Advance { ms }),
        1 => (0..IDS.len()).prop_map(|g| Step::TickEarly { g }),
    ]
}

fn run(config: Config, steps: &[Step]) -> Sim {
    let ids: Vec<GatheringId> = IDS.iter().map(|s| GatheringId::parse(s).unwrap()).collect();
    let mut sim = Sim::new(config);
    for step in steps {
        let open = sim.open_clients();
        match *step {
            Step::Join { g, binary } => {
                let enc = if binary {
                    Encoding::Postcard
                } else {
                    Encoding::Json
                };
                sim.join(&ids[g], enc);
            }
            Step::Leave { c } => pick(&open, c).into_iter().for_each(|c| sim.leave(c)),
            Step::Op { c, valid } => pick(&open, c).into_iter().for_each(|c| sim.op(c, valid)),
            Step::Fetch { c } => pick(&open, c).into_iter().for_each(|c| sim.fetch(c)),
            Step::Ack { c } => pick(&open, c).into_iter().for_each(|c| sim.ack(c)),
            Step::Garbage { c } => pick(&open, c).into_iter().for_each(|c| sim.garbage(c)),
            Step::Hall => {
                sim.step_hall();
            }
            Step::Deliver { g } => {
                sim.step_gathering(&ids[g]);
            }
            Step::Store { fail } => {
                sim.step_storage(fail);
            }
            Step::Advance { ms } => sim.advance(Duration::from_millis(ms)),
            Step::TickEarly { g } => sim.tick(&ids[g]),
        }
    }
    sim.run_until_all_dispersed();
    sim.check_final();
    sim
}

proptest! {
    #![proptest_config(proptest_config(6_000))]

    /// Every invariant holds in every interleaving.
    #[test]
    fn nothing_is_lost_and_dispersal_is_exact(
        config in configs(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        run(config, &steps);
    }
}

proptest! {
    #![proptest_config(proptest_config(4_000))]

    /// Same, with dispersal racing traffic as often as possible: a short idle
    /// timeout and many small clock jumps.
    #[test]
    fn dispersal_races_new_traffic(
        steps in prop::collection::vec(step(), 1..80),
        overlap_commits in any::<bool>(),
    ) {
        let config = Config { overlap_commits, ..racing_config() };
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|s| match s {
                Step::Advance { ms } => Step::Advance { ms: ms % 400 },
                other => other,
            })
            .collect();
        run(config, &steps);
    }
}

/// The generators reach the paths the properties are about; a property that
/// never sees a refusal or a respawn would prove little.
#[test]
fn generated_runs_exercise_the_races() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(proptest_config(1));
    let mut total = gathering_tests::sim::Stats::default();
    for _ in 0..300 {
        let config = configs().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(step(), 1..120)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let s = run(config, &steps).stats;
        total.dispersals += s.dispersals;
        total.refusals += s.refusals;
        total.respawns += s.respawns;
        total.resends += s.resends;
        total.rejections += s.rejections;
        total.overlapped_commits += s.overlapped_commits;
        total.unwritten_after_failure += s.unwritten_after_failure;
    }
    println!("{total:?}");
    assert!(total.dispersals > 100, "{total:?}");
    assert!(total.refusals > 0, "{total:?}");
    assert!(total.respawns > 0, "{total:?}");
    assert!(total.resends > 0, "{total:?}");
    assert!(total.rejections > 0, "{total:?}");
    assert!(total.overlapped_commits > 0, "{total:?}");
    assert!(total.unwritten_after_failure > 0, "{total:?}");
}
