//! What a client does after each close code, and how long it waits before
//! it joins again: the same table and backoff as the TypeScript client
//! (`host-wasm/client/src/policy.ts`), README's "After each close".

use crate::clock::{Duration, Instant};

/// What a room does after its connection closed with some code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Join again after a backoff delay.
    Backoff,
    /// Join again at once.
    Now,
    /// Ask for a fresh token, then join again.
    Token,
    /// Stay dispersed; join again on the next op or an explicit rejoin.
    Dispersed,
    /// Never join again: the room is closed.
    Never,
}

/// The node a 4001 close names as the gathering's owner, from its reason
/// `node N at URL`; `None` for any other reason (`draining`).
pub fn moved_to(reason: &str) -> Option<String> {
    let rest = reason.strip_prefix("node ")?;
    let (node, url) = rest.split_once(" at ")?;
    (!node.is_empty() && !node.contains(' ') && !url.is_empty()).then(|| node.to_owned())
}

/// The policy per close code; a connection lost without a close frame is
/// 1006. Codes not named are treated as 1006.
pub fn close_action(code: u16) -> CloseAction {
    match code {
        4000 => CloseAction::Dispersed,
        1012 | 4001 => CloseAction::Now,
        4003 => CloseAction::Token,
        1000 | 1002 | 1007 | 1008 | 1009 | 4002 | 4401 | 4403 => CloseAction::Never,
        _ => CloseAction::Backoff,
    }
}

/// Full-jitter exponential backoff: attempt n waits a uniformly random time
/// below `min(cap, base * 2^n)`; a connection that stayed open for
/// `reset_after` starts the count again.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The first attempt's ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// How long a connection must stay open to reset the count.
    pub reset_after: Duration,
    attempts: u32,
    opened_at: Option<Instant>,
    /// A splitmix64 state: seeded by the host, so tests replay.
    rng: u64,
}

impl Backoff {
    /// 500 ms doubling to 30 s, reset after 10 s open; `seed` drives the jitter.
    pub fn new(seed: u64) -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
            attempts: 0,
            opened_at: None,
            rng: seed,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempts.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt, counting it.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        match nanos {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.random() % n),
        }
    }

    /// The connection was welcomed at `now`.
    pub fn opened(&mut self, now: Instant) {
        self.opened_at = Some(now);
    }

    /// The connection closed at `now`: resets the count if it lasted.
    pub fn closed(&mut self, now: Instant) {
        if let Some(at) = self.opened_at.take()
            && now.saturating_since(at) >= self.reset_after
        {
            self.attempts = 0;
        }
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_documented_policy() {
        for (codes, action) in [
            (&[1001, 1006, 1011, 1013, 4999][..], CloseAction::Backoff),
            (&[1012, 4001], CloseAction::Now),
            (&[4003], CloseAction::Token),
            (&[4000], CloseAction::Dispersed),
            (
                &[1000, 1002, 1007, 1008, 1009, 4002, 4401, 4403],
                CloseAction::Never,
            ),
        ] {
            for &code in codes {
                assert_eq!(close_action(code), action, "close {code}");
            }
        }
    }

    #[test]
    fn delays_are_jittered_below_a_doubling_capped_ceiling_and_reset_after_uptime() {
        let mut b = Backoff::new(7);
        b.cap = Duration::from_secs(4);
        let mut delays = Vec::new();
        for n in 0..10u32 {
            let ceiling = Duration::from_millis(500 * (1 << n)).min(Duration::from_secs(4));
            assert_eq!(b.ceiling(), ceiling);
            let d = b.next_delay();
            assert!(d < ceiling, "{d:?} < {ceiling:?}");
            delays.push(d);
        }
        delays.sort();
        delays.dedup();
        assert_eq!(delays.len(), 10, "jittered");
        b.opened(Instant::from_millis(0));
        b.closed(Instant::from_millis(9_999));
        assert_eq!(b.ceiling(), Duration::from_secs(4), "not open long enough");
        b.opened(Instant::from_millis(20_000));
        b.closed(Instant::from_millis(30_000));
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }
}
