//! The per-message bookkeeping allocates nothing: a counting global allocator
//! watches a gathering process client messages and early ticks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use gathering_core::protocol;
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    ClientMsg, Config, ConnId, Duration, Encoding, Event, Gathering, GatheringId, Inbound, Instant,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn processing_a_message_and_an_early_tick_does_not_allocate() {
    let t0 = Instant::from_millis(1);
    let mut g: Gathering<Tournament> =
        Gathering::new(GatheringId::parse("alloc").unwrap(), Config::default(), t0);
    g.handle(Event::Message(
        t0,
        Inbound::Join {
            conn: ConnId(1),
            encoding: Encoding::Postcard,
        },
    ));
    while g.poll_action().is_some() {}
    let ack = ClientMsg::<TournamentOp>::Ack { seq: 0 };
    let frame = protocol::encode(&ack, Encoding::Postcard).unwrap();
    let inbound = Inbound::Frame {
        conn: ConnId(1),
        frame,
    };
    let mut deadlines = Vec::with_capacity(1_000);

    let n = allocations_during(|| {
        for i in 1..=1_000u64 {
            let now = t0 + Duration::from_millis(i);
            g.handle(Event::Message(now, inbound.clone()));
            g.handle(Event::Tick(now));
            while g.poll_action().is_some() {}
            deadlines.push(g.next_deadline());
        }
    });
    assert_eq!(n, 0, "allocations on the per-message path");
    // The bookkeeping did happen: the deadline moved with every message.
    let last = t0 + Duration::from_millis(1_000) + Config::default().idle_timeout;
    assert_eq!(
        deadlines.last().copied().flatten().map(|d| d.at),
        Some(last)
    );
    assert_eq!(g.processed(), 1_001);
}
