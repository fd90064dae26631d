//! The bounded queue between a gathering and one connection's socket writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use gathering_core::{Delivery, Frame};
use gathering_driver::Conn;

/// Frames queued per connection before it counts as too slow.
pub const CAPACITY: usize = 1024;
/// Bytes queued per connection before it counts as too slow (a frame
/// larger than this still goes out alone, to a client that reads), pongs
/// not yet written included.
pub const CAPACITY_BYTES: usize = 16 << 20;

/// Frames a connection's reader may have on their way to the gathering or
/// waiting in the queue before it stops reading: each may bring a reply,
/// so this bounds what a client that sends faster than it reads can make
/// the queue hold (with `Config::max_in_flight` acks and half the queue of
/// forwards, at most `CAPACITY`).
pub const READ_AHEAD: usize = 256;

/// Forwards may fill only half the queue: the rest is kept for replies, so
/// that a client that reads is never closed for the acks a commit releases
/// at once (at most `Config::max_in_flight` of them).
const FORWARD_SHARE: usize = 2;

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
/// too slow to take a reply. Full is [`CAPACITY`] frames or
/// [`CAPACITY_BYTES`] bytes, for replies; half of either, for forwards.
///
/// The bound is a pair of shared counters over a linked-list channel rather
/// than a preallocated ring: an idle connection then costs a few dozen
/// bytes, not `CAPACITY` slots.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: UnboundedSender<Outgoing>,
    queued: Arc<Queued>,
}

/// What is queued: frames, and their bytes; and the frames the reader
/// routed that the gathering has not yet taken, with the reader's waker for
/// when it may read again.
#[derive(Debug, Default)]
struct Queued {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    routed: AtomicUsize,
    reader: AtomicWaker,
}

impl Queued {
    fn taken(&self, out: &Outgoing) {
        if let Outgoing::Frame(frame) = out {
            self.frames.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }

    /// Whether `len` more bytes fit in `1 / share` of the queue. An empty
    /// queue takes any one frame.
    fn fits(&self, len: usize, share: usize) -> bool {
        let frames = self.frames.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        frames == 0 || (frames < CAPACITY / share && bytes + len <= CAPACITY_BYTES / share)
    }
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
pub struct Queue {
    rx: UnboundedReceiver<Outgoing>,
    queued: Arc<Queued>,
}

impl Queue {
    /// The next thing to write; `None` once every sender is gone or the
    /// queue was closed for overflow, and everything queued was taken.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let next = self.rx.next().await;
        if let Some(out) = &next {
            self.queued.taken(out);
        }
        next
    }

    /// The next thing to write if one is queued now; `None` when the queue
    /// is empty or has ended (the next [`Queue::recv`] tells which).
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let next = self.rx.try_recv().ok()?;
        self.queued.taken(&next);
        Some(next)
    }

    /// Counts `len` bytes of pongs the WebSocket layer holds for this
    /// client against the queue's bytes, as if queued: a client that pings
    /// and never reads fills the same bound as one that never reads its
    /// replies. Returns whether they still fit in [`CAPACITY_BYTES`].
    pub fn pongs_held(&self, len: usize) -> bool {
        self.queued.bytes.fetch_add(len, Ordering::Relaxed) + len <= CAPACITY_BYTES
    }

    /// Uncounts `len` bytes of pongs, once written.
    pub fn pongs_written(&self, len: usize) {
        self.queued.bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// The reader's view of this queue.
    pub fn gate(&self) -> Gate {
        Gate(self.queued.clone())
    }
}

/// What a connection's reader checks before it reads a frame: how many of
/// its frames are on their way or have replies waiting.
#[derive(Debug)]
pub struct Gate(Arc<Queued>);

impl Gate {
    /// Counts a frame the reader hands to the gathering.
    pub fn routed(&self) {
        self.0.routed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the reader may read another frame: fewer than [`READ_AHEAD`]
    /// are on their way or waiting to be written.
    pub fn may_read(&self) -> bool {
        self.0.routed.load(Ordering::Acquire) + self.0.frames.load(Ordering::Relaxed) < READ_AHEAD
    }

    /// Resolves once the gathering took frames (the reader may read again
    /// if the writer has also drained the queue).
    pub async fn taken_by_gathering(&self) {
        std::future::poll_fn(|cx| {
            self.0.reader.register(cx.waker());
            if self.may_read() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Conn for Outbox {
    fn send(&self, frame: Frame, delivery: Delivery) -> bool {
        Outbox::send(self, frame, delivery)
    }

    fn close(&self, code: u16, reason: &'static str) {
        Outbox::close(self, code, reason)
    }

    fn received(&self) {
        // Saturating: only frames the reader counted are counted down.
        let taken = self
            .queued
            .routed
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        if taken.is_ok() {
            // Wakes the reader only if it waits (it registered).
            self.queued.reader.wake();
        }
    }
}

impl Outbox {
    /// A queue and its receiving end for the connection task.
    pub fn new() -> (Self, Queue) {
        let (tx, rx) = futures_channel::mpsc::unbounded();
        let queued = Arc::new(Queued::default());
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
        let len = frame.len();
        match delivery {
            // Dropped; the gathering re-sends it until acknowledged.
            Delivery::Retried if !self.queued.fits(len, FORWARD_SHARE) => return true,
            Delivery::Once if !self.queued.fits(len, 1) => {
                // The writer drains what is queued, then closes with
                // "policy violation": the client stopped reading.
                self.tx.close_channel();
                return false;
            }
            _ => {}
        }
        self.queued.frames.fetch_add(1, Ordering::Relaxed);
        self.queued.bytes.fetch_add(len, Ordering::Relaxed);
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

    fn drain(queue: &mut Queue) -> usize {
        let mut drained = 0;
        while let Some(Some(Outgoing::Frame(_))) = queue.recv().now_or_never() {
            drained += 1;
        }
        drained
    }

    #[test]
    fn forwards_fill_half_the_queue_and_replies_the_rest() {
        let (outbox, mut queue) = Outbox::new();
        for _ in 0..CAPACITY {
            assert!(outbox.send(frame(), Delivery::Retried));
        }
        // Half full of forwards: more are dropped (the gathering re-sends
        // them), and replies still fit.
        for _ in 0..CAPACITY / 2 {
            assert!(outbox.send(frame(), Delivery::Once));
        }
        // Full: a reply cannot be dropped, so the connection is closed.
        assert!(!outbox.send(frame(), Delivery::Once));
        assert!(!outbox.send(frame(), Delivery::Retried));
        assert_eq!(drain(&mut queue), CAPACITY);
    }

    #[test]
    fn the_bound_counts_bytes_and_a_large_frame_goes_alone() {
        let (outbox, mut queue) = Outbox::new();
        let big = Frame::Binary(vec![0; CAPACITY_BYTES / 4].into());
        // An empty queue takes a frame of any size.
        let huge = Frame::Binary(vec![0; CAPACITY_BYTES * 2].into());
        assert!(outbox.send(huge, Delivery::Once));
        assert_eq!(drain(&mut queue), 1);
        // Forwards stop at half the bytes ...
        assert!(outbox.send(big.clone(), Delivery::Retried));
        assert!(outbox.send(big.clone(), Delivery::Retried));
        assert!(outbox.send(big.clone(), Delivery::Retried));
        assert_eq!(queue.queued.frames.load(Ordering::Relaxed), 2);
        // ... replies at all of them.
        assert!(outbox.send(big.clone(), Delivery::Once));
        assert!(outbox.send(big.clone(), Delivery::Once));
        assert!(!outbox.send(big, Delivery::Once));
        assert_eq!(drain(&mut queue), 4);
        assert_eq!(queue.queued.bytes.load(Ordering::Relaxed), 0);
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
