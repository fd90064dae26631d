//! Benchmark strategies for finding stale gatherings (feature `bench`), so
//! that `gathering-load overhead` can measure the product's one-timer
//! detection against the alternatives in the same host. Not in the
//! product's build.

use std::pin::Pin;
use std::task::{Context, Poll};

use gathering_core::{Deadline, Duration, Why};

use super::clock::Clock;
use super::timer::{Timer, Timers};

/// How a gathering task finds out that its gathering went stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detection {
    /// The product: one timer, re-armed only when a deadline is earlier
    /// than the armed one.
    #[default]
    Exact,
    /// No idle or empty dispersal at all (the baseline): gatherings never
    /// disperse on their own.
    Off,
    /// Idle and empty deadlines come from a tokio timer reset to
    /// `now + idle_timeout` after every batch of mail, as hosts that re-arm
    /// per message do.
    RearmPerMessage,
}

/// The product's timer, plus the re-armed one of [`Detection::RearmPerMessage`].
#[derive(Debug, Default)]
pub struct BenchTimer {
    timer: Timer,
    rearm: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn idle_or_empty(deadline: Deadline) -> bool {
    matches!(deadline.why, Why::Idle | Why::Empty)
}

pub(super) fn poll(
    detection: Detection,
    timers: &Timers,
    clock: Clock,
    t: &mut BenchTimer,
    deadline: Deadline,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match detection {
        Detection::Off if idle_or_empty(deadline) => Poll::Pending,
        Detection::RearmPerMessage if idle_or_empty(deadline) => {
            let sleep = t.rearm.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(clock.to_tokio(deadline.at)))
            });
            let fired = sleep.as_mut().poll(cx);
            if fired.is_ready() {
                // Fired once; the next batch of mail re-arms it.
                sleep
                    .as_mut()
                    .reset(clock.to_tokio(gathering_core::Instant::from_nanos(u64::MAX)));
            }
            fired
        }
        _ => timers.poll(&mut t.timer, clock.to_std(deadline.at), cx),
    }
}

pub(super) fn handled(detection: Detection, clock: Clock, idle: Duration, t: &mut BenchTimer) {
    if detection == Detection::RearmPerMessage {
        let at = clock.to_tokio(clock.now() + idle);
        match t.rearm.as_mut() {
            Some(sleep) => sleep.as_mut().reset(at),
            None => t.rearm = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
}
