//! Time as data: the core never reads a clock, every input carries its instant.

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point in time, in nanoseconds since an epoch the host chooses.
///
/// The core only compares and offsets instants; it never asks what time it
/// is. A host maps its own clock onto this type (`std::time::Instant` on the
/// server, `performance.now()` in the browser) and a test uses a fake clock,
/// so the same state machine runs identically under all three. Arithmetic
/// saturates instead of overflowing: a deadline that would lie beyond the
/// representable range is simply "never".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The host's epoch.
    pub const ZERO: Instant = Instant(0);

    /// The instant `nanos` nanoseconds after the host's epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// The instant `millis` milliseconds after the host's epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the host's epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// `d` in nanoseconds, saturating; u64 arithmetic only (this is on the
/// per-message path through `next_deadline`, where u128 math shows).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(nanos(rhs)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(nanos(rhs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let far = Instant::from_nanos(u64::MAX - 1);
        assert_eq!(far + Duration::from_secs(1), Instant::from_nanos(u64::MAX));
        assert_eq!(Instant::ZERO - Duration::from_secs(1), Instant::ZERO);
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::from_nanos(u64::MAX));
    }

    #[test]
    fn since_is_never_negative() {
        let a = Instant::from_millis(5);
        let b = Instant::from_millis(8);
        assert_eq!(b.saturating_since(a), Duration::from_millis(3));
        assert_eq!(a.saturating_since(b), Duration::ZERO);
    }
}
