//! Test support for gathering: a deterministic simulation of the whole system
//! on a fake clock ([`sim::Sim`]), shared by the property and scenario tests,
//! and the real driver under a fake runtime ([`driven::Driven`]); both script
//! the same clients and check them with one checker ([`clients`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod clients;
pub mod driven;
pub mod harness;
pub mod sim;

/// The proptest configuration every property uses: `cases` cases from a fixed
/// seed, so CI runs are reproducible; set `PROPTEST_RNG_SEED` to explore
/// others and `PROPTEST_CASES` to run more or fewer.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6761_7468_6572);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Gathering configurations the property tests draw from: idle timeouts of
/// 1 to 5 s, an empty grace or none, retry intervals of 50 to 500 ms
/// backing off 2 to 6 times, 2 to 8 forwards unacknowledged at most, and a
/// snapshot every 1 to 8 ops or 8 to 512 bytes of log.
pub fn configs() -> impl proptest::strategy::Strategy<Value = gathering_core::Config> {
    use gathering_core::{Config, Duration};
    use proptest::prelude::*;
    (
        1_000u64..5_000,
        prop::option::of(300u64..3_000),
        50u64..500,
        2u64..6,
        2u32..8,
        (1u32..8, 8u32..512),
        any::<bool>(),
    )
        .prop_map(
            |(idle, grace, retry, factor, max_unacked, (snapshot_ops, snapshot_bytes), overlap)| {
                Config {
                    idle_timeout: Duration::from_millis(idle),
                    empty_grace: grace.map(Duration::from_millis),
                    retry_interval: Duration::from_millis(retry),
                    max_retry_interval: Duration::from_millis(retry * factor),
                    max_unacked,
                    // Unbounded: the runs count every valid op sent as owed (the
                    // bound has its own tests).
                    max_in_flight: u32::MAX,
                    // Small, so that runs compact their logs often.
                    snapshot_ops,
                    snapshot_bytes,
                    // Both ways a host may take commits.
                    overlap_commits: overlap,
                    // Unlimited, as above: their bounds have their own tests.
                    ..Config::default()
                }
            },
        )
}

/// The configuration of the racing properties: dispersal as close to
/// traffic as it gets (300 ms idle, 200 ms grace, 100 ms retries).
pub fn racing_config() -> gathering_core::Config {
    use gathering_core::{Config, Duration};
    Config {
        idle_timeout: Duration::from_millis(300),
        empty_grace: Some(Duration::from_millis(200)),
        retry_interval: Duration::from_millis(100),
        max_retry_interval: Duration::from_millis(400),
        max_unacked: 4,
        max_in_flight: u32::MAX,
        snapshot_ops: 3,
        snapshot_bytes: 1 << 20,
        ..Config::default()
    }
}

/// Runs `test` on `cases` values of `strategy` from the fixed seed of
/// [`proptest_config`]; a panic fails the case, which proptest shrinks to
/// the smallest failing value it can find and reports.
pub fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value))
where
    S: proptest::strategy::Strategy,
{
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config(cases));
    if let Err(e) = runner.run(&strategy, |value| {
        test(value);
        Ok(())
    }) {
        panic!("{e}\n{runner}");
    }
}

/// How often a run took the paths worth taking, by name (`dispersals`,
/// `acks`, ...): what the tests that check the generators assert on. One
/// type for both harnesses and their clients, so that a new counter needs
/// no new field anywhere.
#[derive(Clone, Debug, Default)]
pub struct Counts(std::collections::BTreeMap<&'static str, u64>);

impl Counts {
    /// `what` happened once more.
    pub fn bump(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }

    /// How often `what` happened.
    pub fn get(&self, what: &str) -> u64 {
        self.0.get(what).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        for (what, n) in &other.0 {
            *self.0.entry(what).or_default() += n;
        }
    }

    /// Fails unless each `(what, least)` happened at least `least` times.
    pub fn assert_at_least(&self, least: &[(&str, u64)]) {
        for (what, n) in least {
            let got = self.get(what);
            assert!(got >= *n, "{what}: {got}, fewer than {n}, in {self:?}");
        }
    }
}

/// `runs` runs drawn as the properties draw them (a configuration of
/// [`configs`] and 1 to 119 steps), from the fixed seed: for the tests
/// that check the generators reach the paths the properties are about.
pub fn drawn<S: proptest::strategy::Strategy>(
    step: S,
    runs: usize,
) -> impl Iterator<Item = (gathering_core::Config, Vec<S::Value>)> {
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config(1));
    let steps = proptest::collection::vec(step, 1..120);
    (0..runs).map(move |_| {
        let config = configs().new_tree(&mut runner).unwrap().current();
        let steps = steps.new_tree(&mut runner).unwrap().current();
        (config, steps)
    })
}

/// The `i`-th of `items`, wrapping; `None` if there are none.
pub fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}
