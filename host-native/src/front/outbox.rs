//! The bounded queue between a gathering and one connection's socket writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt;
use gathering_core::{Delivery, Frame};
use gathering_driver::Conn;

/// Frames queued per connection before it counts as too slow.
pub const CAPACITY: usize = 1024;

/// What the connection task is asked to write.
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
///
/// The bound is a shared counter over a linked-list channel rather than a
/// preallocated ring: an idle connection then costs a few dozen bytes, not
/// `CAPACITY` slots.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
pub struct Queue {
    rx: UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    /// The next thing to write; `None` once every sender is gone or the
    /// queue was closed for overflow, and everything queued was taken.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let next = self.rx.next().await;
        if next.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        next
    }
}

impl Queue {
    /// The next thing to write if one is queued now; `None` when the queue
    /// is empty or has ended (the next [`Queue::recv`] tells which).
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let next = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(next)
    }
}

impl Conn for Outbox {
    fn send(&self, frame: Frame, delivery: Delivery) -> bool {
        Outbox::send(self, frame, delivery)
    }

    fn close(&self, code: u16, reason: &'static str) {
        Outbox::close(self, code, reason)
    }
}

impl Outbox {
    /// A queue and its receiving end for the connection task.
    pub fn new() -> (Self, Queue) {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                tx,
                queued: queued.clone(),
            },
            Queue { rx, queued },
        )
    }

    /// Queues `frame`. Returns `false` if the connection is gone or was just
    /// closed for being too slow; the caller should forget it.
    pub fn send(&self, frame: Frame, delivery: Delivery) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if self.queued.load(Ordering::Relaxed) >= CAPACITY {
            if delivery == Delivery::Retried {
                // Dropped; the gathering re-sends it until acknowledged.
                return true;
            }
            // The writer drains what is queued, then closes with "policy
            // violation": the client stopped reading.
            self.tx.close_channel();
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.unbounded_send(Outgoing::Frame(frame)).is_ok()
    }

    /// Queues a close frame, once; the writer stops after it.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self
            .tx
            .unbounded_send(Outgoing::Close(code, reason))
            .is_err()
        {
            self.tx.close_channel();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn frame() -> Frame {
        Frame::Text("{}".into())
    }

    #[test]
    fn a_full_queue_drops_forwards_and_closes_on_a_reply() {
        let (outbox, mut queue) = Outbox::new();
        for _ in 0..CAPACITY {
            assert!(outbox.send(frame(), Delivery::Retried));
        }
        // Full: a forward is dropped (the gathering re-sends it) ...
        assert!(outbox.send(frame(), Delivery::Retried));
        // ... a reply cannot be, so the connection is closed for overflow.
        assert!(!outbox.send(frame(), Delivery::Once));
        assert!(!outbox.send(frame(), Delivery::Retried));
        let mut drained = 0;
        while let Some(Some(Outgoing::Frame(_))) = queue.recv().now_or_never() {
            drained += 1;
        }
        assert_eq!(drained, CAPACITY);
    }

    #[test]
    fn the_writer_frees_room_and_sees_the_close_last() {
        let (outbox, mut queue) = Outbox::new();
        for _ in 0..CAPACITY {
            outbox.send(frame(), Delivery::Once);
        }
        assert!(matches!(
            queue.recv().now_or_never(),
            Some(Some(Outgoing::Frame(_)))
        ));
        // One taken, one more fits.
        assert!(outbox.send(frame(), Delivery::Once));
        outbox.close(4000, "idle");
        let mut last = None;
        while let Some(Some(item)) = queue.recv().now_or_never() {
            last = Some(item);
        }
        assert!(matches!(last, Some(Outgoing::Close(4000, "idle"))));
    }
}
