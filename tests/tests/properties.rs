//! Property tests: random interleavings of joins, leaves, ops, fetches, acks,
//! garbage, storage completions and failures, hall turns and clock jumps, with
//! the invariants of `gathering_tests::sim` checked after every step and at the
//! end, once everything has dispersed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use gathering_core::{Config, Duration};
use gathering_tests::clients::{ClientStep, ids, steps};
use gathering_tests::sim::Sim;
use gathering_tests::{configs, drawn, proptest_config, racing_config};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Client(ClientStep),
    Hall,
    Deliver { g: usize },
    Store { fail: bool },
    Advance { ms: u64 },
    TickEarly { g: usize },
}

/// A step; clock jumps are up to `max_ms` long.
fn step(max_ms: u64) -> impl Strategy<Value = Step> {
    let g = || 0..gathering_tests::clients::IDS.len();
    steps(
        Step::Client,
        vec![
            (6, Just(Step::Hall).boxed()),
            (6, g().prop_map(|g| Step::Deliver { g }).boxed()),
            (
                3,
                prop::bool::weighted(0.15)
                    .prop_map(|fail| Step::Store { fail })
                    .boxed(),
            ),
            (3, (0..max_ms).prop_map(|ms| Step::Advance { ms }).boxed()),
            (1, g().prop_map(|g| Step::TickEarly { g }).boxed()),
        ],
    )
}

fn run(config: Config, steps: &[Step]) -> Sim {
    let ids = ids();
    let mut sim = Sim::new(config);
    for step in steps {
        match step {
            Step::Client(step) => sim.play(step, &ids),
            Step::Hall => {
                sim.step_hall();
            }
            Step::Deliver { g } => {
                sim.step_gathering(&ids[*g]);
            }
            Step::Store { fail } => {
                sim.step_storage(*fail);
            }
            Step::Advance { ms } => sim.advance(Duration::from_millis(*ms)),
            Step::TickEarly { g } => sim.tick(&ids[*g]),
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
        steps in prop::collection::vec(step(4_000), 1..120),
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
        steps in prop::collection::vec(step(400), 1..80),
        overlap_commits in any::<bool>(),
    ) {
        let config = Config { overlap_commits, ..racing_config() };
        run(config, &steps);
    }
}

/// The generators reach the paths the properties are about; a property that
/// never sees a refusal or a respawn would prove little.
#[test]
fn generated_runs_exercise_the_races() {
    let mut total = gathering_tests::sim::Stats::default();
    let mut clients = gathering_tests::clients::ClientStats::default();
    for (config, steps) in drawn(step(4_000), 300) {
        let sim = run(config, &steps);
        let (s, c) = (sim.stats, &sim.clients.stats);
        clients.resends += c.resends;
        clients.rejections += c.rejections;
        total.dispersals += s.dispersals;
        total.refusals += s.refusals;
        total.respawns += s.respawns;
        total.overlapped_commits += s.overlapped_commits;
        total.unwritten_after_failure += s.unwritten_after_failure;
    }
    println!("{total:?} {clients:?}");
    assert!(total.dispersals > 100, "{total:?}");
    assert!(total.refusals > 0, "{total:?}");
    assert!(total.respawns > 0, "{total:?}");
    assert!(clients.resends > 0, "{clients:?}");
    assert!(clients.rejections > 0, "{clients:?}");
    assert!(total.overlapped_commits > 0, "{total:?}");
    assert!(total.unwritten_after_failure > 0, "{total:?}");
}
