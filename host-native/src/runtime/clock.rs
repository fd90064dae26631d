//! The server's clock, mapped onto the core's [`Instant`].

use std::time::Duration;

use gathering_core::Instant;

/// Maps the monotonic OS clock onto core instants (nanoseconds since the
/// server started) and back onto tokio's timer instants.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            base: std::time::Instant::now(),
        }
    }
}

impl Clock {
    /// The current time.
    pub fn now(&self) -> Instant {
        let nanos = self.base.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The OS instant for `at`; instants too far away to represent become
    /// "in a year".
    pub fn to_std(self, at: Instant) -> std::time::Instant {
        self.base
            .checked_add(Duration::from_nanos(at.as_nanos()))
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }

    /// The tokio instant for `at` (the benchmarks' tokio timers); instants too far away to represent become
    /// "in a year", which is as good as never for a timer that is re-armed.
    #[cfg(feature = "bench")]
    pub fn to_tokio(self, at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.to_std(at))
    }
}
