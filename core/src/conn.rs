//! What a gathering keeps per connection: its encoding and the forwards it has
//! not yet acknowledged.

use std::collections::VecDeque;

use crate::clock::{Duration, Instant};
use crate::protocol::{Encoding, Frame};

/// One connection's delivery state inside a gathering.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The encoding of the last frame the client sent; replies use it.
    pub encoding: Encoding,
    /// Forwards sent but not yet acknowledged, in sequence order.
    pub unacked: VecDeque<(u64, Frame)>,
    /// When the unacknowledged forwards are next re-sent.
    pub retry_at: Option<Instant>,
    /// The wait before the next re-send after `retry_at`.
    pub backoff: Duration,
}

impl Conn {
    pub fn new(encoding: Encoding, retry_interval: Duration) -> Self {
        Conn {
            encoding,
            unacked: VecDeque::new(),
            retry_at: None,
            backoff: retry_interval,
        }
    }

    /// Records a forward sent at `now`; returns when this connection next
    /// needs a retry, so the gathering can lower its retry bound.
    pub fn sent(&mut self, now: Instant, seq: u64, frame: Frame) -> Instant {
        self.unacked.push_back((seq, frame));
        *self.retry_at.get_or_insert(now + self.backoff)
    }

    /// Acknowledges every forward up to and including `seq`. Progress resets
    /// the backoff; the pending retry time stays, so an ack never postpones
    /// the re-send of what is still missing.
    pub fn ack(&mut self, seq: u64, retry_interval: Duration) {
        let before = self.unacked.len();
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
        if self.unacked.len() < before {
            self.backoff = retry_interval;
        }
        if self.unacked.is_empty() {
            self.retry_at = None;
        }
    }

    /// If a retry is due at `now`, returns the frames to re-send and schedules
    /// the next retry with doubled backoff (capped at `max`).
    pub fn due(&mut self, now: Instant, max: Duration) -> Option<impl Iterator<Item = &Frame>> {
        match self.retry_at {
            Some(at) if at <= now => {
                self.backoff = self.backoff.saturating_mul(2).min(max);
                self.retry_at = Some(now + self.backoff);
                Some(self.unacked.iter().map(|(_, f)| f))
            }
            _ => None,
        }
    }
}
