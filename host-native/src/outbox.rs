//! The bounded queue between a gathering and one connection's socket writer.

use gathering_core::{Delivery, Frame};

/// Frames queued per connection before it counts as too slow.
pub const CAPACITY: usize = 1024;

/// What the writer task is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Write a data frame.
    Frame(Frame),
    /// Write a close frame with this code and reason, then stop.
    Close(u16, &'static str),
}

/// The sending side of a connection's queue. Never blocks its gathering: a
/// full queue drops a forward (the gathering re-sends it) and closes a client
/// too slow to take a reply.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: async_channel::Sender<Outgoing>,
}

impl Outbox {
    /// A queue and its receiving end for the writer task.
    pub fn new() -> (Self, async_channel::Receiver<Outgoing>) {
        let (tx, rx) = async_channel::bounded(CAPACITY);
        (Outbox { tx }, rx)
    }

    /// Queues `frame`. Returns `false` if the connection is gone or was just
    /// closed for being too slow; the caller should forget it.
    pub fn send(&self, frame: Frame, delivery: Delivery) -> bool {
        match self.tx.try_send(Outgoing::Frame(frame)) {
            Ok(()) => true,
            Err(async_channel::TrySendError::Full(_)) if delivery == Delivery::Retried => true,
            Err(async_channel::TrySendError::Full(_)) => {
                // The writer drains what is queued, then closes with
                // "policy violation": the client stopped reading.
                self.tx.close();
                false
            }
            Err(async_channel::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a close frame, once; the writer stops after it.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.tx.try_send(Outgoing::Close(code, reason)).is_err() {
            self.tx.close();
        }
    }
}
