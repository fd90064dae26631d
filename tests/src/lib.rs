//! Test support for gathering: a deterministic simulation of the whole system
//! on a fake clock ([`sim::Sim`]), shared by the property and scenario tests,
//! and the real driver under a fake runtime ([`driven::Driven`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod driven;
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
