//! What a gathering publishes about itself, read by listings without locks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use gathering_core::{Duration, Instant};

/// A live gathering's published figures, updated by its task after every
/// wake-up and read by the host from anywhere (relaxed atomics: each figure
/// is exact, the set may be one wake-up apart).
#[derive(Debug, Default)]
pub struct Status {
    connections: AtomicU32,
    last_activity: AtomicU64,
    seq: AtomicU64,
}

impl Status {
    pub(crate) fn publish(&self, connections: usize, last_activity: Instant, seq: u64) {
        let connections = u32::try_from(connections).unwrap_or(u32::MAX);
        self.connections.store(connections, Ordering::Relaxed);
        self.last_activity
            .store(last_activity.as_nanos(), Ordering::Relaxed);
        self.seq.store(seq, Ordering::Relaxed);
    }

    /// Connections joined.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Time of the last client activity.
    pub fn last_activity(&self) -> Instant {
        Instant::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }

    /// Number of the last op applied.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// When it disperses for idleness if nothing happens meanwhile.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.last_activity() + idle_timeout
    }
}
