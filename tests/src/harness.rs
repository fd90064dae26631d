//! What both harnesses do when a property test asks, and the steps those
//! tests draw: the clients' steps, hall turns, storage and the clock are
//! common to both; each harness adds its own ([`Step::Own`]).

use std::fmt::Debug;

use gathering_core::{Duration, GatheringId};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

use crate::clients::{ClientStep, IDS};

/// A system under test that scripted clients, storage and a fake clock
/// drive: the simulation of the core ([`crate::sim::Sim`]) or the real
/// driver under a fake runtime ([`crate::driven::Driven`]).
pub trait Harness {
    /// A client takes `step`; what it sends heads for the hall.
    fn play(&mut self, step: &ClientStep, ids: &[GatheringId]);
    /// The hall takes its oldest input. Returns whether there was one.
    fn step_hall(&mut self) -> bool;
    /// The oldest storage write completes, or fails. Returns whether there
    /// was one.
    fn step_store(&mut self, fail: bool) -> bool;
    /// Moves the clock forward by `by`, waking each timer exactly at its
    /// instant on the way.
    fn advance(&mut self, by: Duration);
}

/// A step of a property test: one of the common ones, or the harness's
/// own `S`.
#[derive(Clone, Debug)]
pub enum Step<S> {
    /// A client acts.
    Client(ClientStep),
    /// The hall takes its oldest input.
    Hall,
    /// The oldest write completes, or fails.
    Store {
        /// Whether it fails.
        fail: bool,
    },
    /// The clock jumps.
    Advance {
        /// By this many milliseconds.
        ms: u64,
    },
    /// The harness's own.
    Own(S),
}

impl<S> Step<S> {
    /// Takes a common step on `h`; returns the harness's own for it to take.
    pub fn take(&self, h: &mut impl Harness, ids: &[GatheringId]) -> Option<&S> {
        match self {
            Step::Client(step) => h.play(step, ids),
            Step::Hall => _ = h.step_hall(),
            Step::Store { fail } => _ = h.step_store(*fail),
            Step::Advance { ms } => h.advance(Duration::from_millis(*ms)),
            Step::Own(own) => return Some(own),
        }
        None
    }
}

/// The steps of a harness, weighted: clients' steps, hall turns, writes
/// that fail 15 % of the time, clock jumps of up to `max_ms`, and the
/// harness's `own` steps with their weights.
pub fn steps<S: Clone + Debug + 'static>(
    max_ms: u64,
    own: Vec<(u32, BoxedStrategy<S>)>,
) -> Union<BoxedStrategy<Step<S>>> {
    let client = |s: BoxedStrategy<ClientStep>| s.prop_map(Step::Client).boxed();
    let join = (0..IDS.len(), any::<bool>()).prop_map(|(g, binary)| ClientStep::Join { g, binary });
    let op = (any::<usize>(), prop::bool::weighted(0.8))
        .prop_map(|(c, valid)| ClientStep::Op { c, valid });
    let mut all = vec![
        (3, client(join.boxed())),
        (
            1,
            client(any::<usize>().prop_map(|c| ClientStep::Leave { c }).boxed()),
        ),
        (4, client(op.boxed())),
        (
            1,
            client(any::<usize>().prop_map(|c| ClientStep::Fetch { c }).boxed()),
        ),
        (
            2,
            client(any::<usize>().prop_map(|c| ClientStep::Ack { c }).boxed()),
        ),
        (
            1,
            client(
                any::<usize>()
                    .prop_map(|c| ClientStep::Garbage { c })
                    .boxed(),
            ),
        ),
        (6, Just(Step::Hall).boxed()),
        (
            4,
            prop::bool::weighted(0.15)
                .prop_map(|fail| Step::Store { fail })
                .boxed(),
        ),
        (3, (0..max_ms).prop_map(|ms| Step::Advance { ms }).boxed()),
    ];
    all.extend(
        own.into_iter()
            .map(|(w, s)| (w, s.prop_map(Step::Own).boxed())),
    );
    Union::new_weighted(all)
}
