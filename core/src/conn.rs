//! What a gathering keeps per connection: its member, its encoding and the
//! forwards it has not yet acknowledged.

use std::collections::VecDeque;

use crate::SharedMember;
use crate::clock::{Duration, Instant};
use crate::id::ConnId;
use crate::protocol::{CLOSE_POLICY, Encoding, Frame};

/// One connection's delivery state inside a gathering.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The encoding of the last frame the client sent; replies use it.
    pub encoding: Encoding,
    /// Forwards sent but not yet acknowledged, in sequence order, each
    /// with when it was last sent.
    pub unacked: VecDeque<Unacked>,
    /// When the oldest-sent unacknowledged forward has waited `backoff`.
    pub retry_at: Option<Instant>,
    /// How long a forward waits unacknowledged before it is re-sent, in
    /// nanoseconds (half a `Duration`: every connection holds one).
    backoff_ns: u64,
    /// Its ops accepted and waiting for their commit.
    pub in_flight: u32,
    /// Who it is; `None` for an open server's member until it first acts.
    pub member: Option<SharedMember>,
    /// Its op rate, when the gathering limits it.
    pub rate: Bucket,
    /// Ops refused for the rate in a row since one was let through.
    pub rate_refused: u16,
    /// Closed at this limit once the ops it had sent when it broke it are
    /// acked; no forward is sent to it meanwhile.
    pub closing: Option<Limit>,
    /// With `closing`: the number of its last op accepted before then.
    pub closing_at: u64,
}

/// A bound a connection broke, closing it (see `Action::Refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Far over the op rate.
    Flood,
    /// Too many forwards unacknowledged.
    Lagging,
}

impl Limit {
    /// The refusal's code, the close code and the close reason.
    pub fn close(self) -> (&'static str, u16, &'static str) {
        match self {
            Limit::Flood => ("flood", CLOSE_POLICY, "op rate far over the limit"),
            Limit::Lagging => ("lagging", CLOSE_POLICY, "too many unacknowledged forwards"),
        }
    }
}

/// A token bucket of ops: `burst` ops at once, refilled at `per_sec`. Eight
/// bytes per connection: tokens in thousandths (a slow refill is not lost
/// to rounding), and the time of the last refill in milliseconds of the
/// host's clock, wrapping (elapsed times are taken modulo 49 days; a
/// connection silent that long merely refills less than it could).
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// Thousandths of an op available, plus one (0: never used, so full).
    milli: u32,
    /// When `milli` was last brought up to date, in wrapping milliseconds.
    at_ms: u32,
}

impl Bucket {
    /// Whether an op may go at `now` under `per_sec` ops a second and a
    /// burst of `burst`; takes its token if so.
    pub fn take(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        let full = burst.max(1).saturating_mul(1000);
        // Truncated on purpose: the clock's milliseconds, wrapping.
        let now_ms = (now.as_nanos() / 1_000_000) as u32;
        let available = if self.milli == 0 {
            full
        } else {
            let elapsed = u64::from(now_ms.wrapping_sub(self.at_ms));
            let refill = elapsed.saturating_mul(u64::from(per_sec));
            let refill = u32::try_from(refill).unwrap_or(u32::MAX);
            (self.milli - 1).saturating_add(refill).min(full)
        };
        self.at_ms = now_ms;
        let (ok, left) = match available.checked_sub(1000) {
            Some(left) => (true, left),
            None => (false, available),
        };
        self.milli = left + 1;
        ok
    }
}

/// `d` in nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A forward sent and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub seq: u64,
    pub frame: Frame,
    /// When it was last sent.
    pub sent: Instant,
}

impl Conn {
    pub fn new(encoding: Encoding, member: Option<SharedMember>, retry_interval: Duration) -> Self {
        Conn {
            encoding,
            unacked: VecDeque::new(),
            retry_at: None,
            backoff_ns: nanos(retry_interval),
            in_flight: 0,
            member,
            rate: Bucket::default(),
            rate_refused: 0,
            closing: None,
            closing_at: 0,
        }
    }

    /// How long a forward waits unacknowledged before it is re-sent.
    pub fn backoff(&self) -> Duration {
        Duration::from_nanos(self.backoff_ns)
    }

    /// Records a forward sent at `now`; returns when this connection next
    /// needs a retry, so the gathering can lower its retry bound.
    pub fn sent(&mut self, now: Instant, seq: u64, frame: Frame) -> Instant {
        self.unacked.push_back(Unacked {
            seq,
            frame,
            sent: now,
        });
        *self.retry_at.get_or_insert(now + self.backoff())
    }

    /// Acknowledges every forward up to and including `seq`. Progress resets
    /// the backoff, and the next retry falls when the oldest-sent forward
    /// still unacknowledged has itself waited that long: a forward is
    /// re-sent only for its own age, never because an older one was late.
    pub fn ack(&mut self, seq: u64, retry_interval: Duration) {
        let before = self.unacked.len();
        while self.unacked.front().is_some_and(|u| u.seq <= seq) {
            self.unacked.pop_front();
        }
        if self.unacked.len() < before {
            self.backoff_ns = nanos(retry_interval);
            let backoff = self.backoff();
            self.retry_at = self.oldest_sent().map(|sent| sent + backoff);
        }
    }

    /// When the forward sent longest ago was sent.
    fn oldest_sent(&self) -> Option<Instant> {
        self.unacked.iter().map(|u| u.sent).min()
    }

    /// If a retry is due at `now`, returns the frames that have waited
    /// `backoff` unacknowledged (marking them sent now), doubles the
    /// backoff (capped at `max`), and schedules the next retry by age.
    pub fn due(&mut self, now: Instant, max: Duration) -> Option<Vec<Frame>> {
        match self.retry_at {
            Some(at) if at <= now => {
                let mut frames = Vec::new();
                let backoff = self.backoff();
                for u in self.unacked.iter_mut() {
                    if u.sent + backoff <= now {
                        u.sent = now;
                        frames.push(u.frame.clone());
                    }
                }
                let backoff = backoff.saturating_mul(2).min(max);
                self.backoff_ns = nanos(backoff);
                self.retry_at = self.oldest_sent().map(|sent| sent + backoff);
                Some(frames)
            }
            _ => None,
        }
    }
}

/// Values per connection, kept in `ConnId` order, so that every walk over
/// them (and so the order of whatever it emits) is deterministic. A
/// gathering keeps its connections' delivery state in one; a host may keep
/// its per-connection handles (socket queues) in another.
///
/// A vector sorted by id rather than a `BTreeMap` or `HashMap`: ids only
/// grow, so an insert appends, lookups are a binary search, and the memory is
/// what is held. An emptied `BTreeMap` keeps its root node (close to 900
/// bytes with a gathering's entries) for good, and a `HashMap` starts at
/// four slots; here the first insert reserves one slot, and the memory is
/// given back when the last entry leaves, which is what every idle
/// gathering is made of.
#[derive(Debug)]
pub struct ConnMap<V> {
    list: Vec<(ConnId, V)>,
}

impl<V> Default for ConnMap<V> {
    fn default() -> Self {
        ConnMap { list: Vec::new() }
    }
}

impl<V> ConnMap<V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn find(&self, conn: ConnId) -> Result<usize, usize> {
        // Connections arrive in id order, so the end is the likeliest slot.
        match self.list.last() {
            Some((last, _)) if *last < conn => Err(self.list.len()),
            _ => self.list.binary_search_by_key(&conn, |(id, _)| *id),
        }
    }

    /// The value of `conn`.
    pub fn get(&self, conn: ConnId) -> Option<&V> {
        self.find(conn).ok().map(|i| &self.list[i].1)
    }

    /// The value of `conn`, to change.
    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut V> {
        self.find(conn).ok().map(|i| &mut self.list[i].1)
    }

    /// Sets the value of `conn`; returns the one it replaced.
    pub fn insert(&mut self, conn: ConnId, value: V) -> Option<V> {
        match self.find(conn) {
            Ok(i) => Some(std::mem::replace(&mut self.list[i].1, value)),
            Err(i) => {
                if self.list.capacity() == 0 {
                    // Most gatherings hold one or two connections: no slack.
                    self.list.reserve_exact(1);
                }
                self.list.insert(i, (conn, value));
                None
            }
        }
    }

    /// Removes `conn`; the memory goes once the last entry has.
    pub fn remove(&mut self, conn: ConnId) -> Option<V> {
        let i = self.find(conn).ok()?;
        let (_, removed) = self.list.remove(i);
        if self.list.is_empty() {
            self.list = Vec::new();
        }
        Some(removed)
    }

    /// Every id, in order.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.list.iter().map(|(id, _)| *id)
    }

    /// Every entry in id order, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut V)> {
        self.list.iter_mut().map(|(id, v)| (*id, v))
    }

    /// Empties the map, handing back every entry in id order.
    pub fn take(&mut self) -> Vec<(ConnId, V)> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn conn() -> Conn {
        Conn::new(Encoding::Json, None, Duration::from_millis(1))
    }

    #[test]
    fn connections_stay_in_id_order_whatever_order_they_join_in() {
        let mut conns = ConnMap::default();
        for id in [5, 2, 9, 7] {
            assert!(conns.insert(ConnId(id), conn()).is_none());
        }
        assert!(conns.insert(ConnId(2), conn()).is_some());
        let ids: Vec<u64> = conns.iter_mut().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [2, 5, 7, 9]);
        assert!(conns.get(ConnId(7)).is_some());
        assert!(conns.get(ConnId(3)).is_none());
        assert!(conns.remove(ConnId(5)).is_some());
        assert!(conns.remove(ConnId(5)).is_none());
        let taken: Vec<u64> = conns.take().into_iter().map(|(id, _)| id.0).collect();
        assert_eq!(taken, [2, 7, 9]);
        assert!(conns.is_empty());
    }
}
