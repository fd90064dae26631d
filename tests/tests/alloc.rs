//! The per-message bookkeeping allocates nothing, and a gathering whose
//! connections have left holds no memory for them: a counting global
//! allocator watches a gathering process client messages and early ticks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gathering_core::protocol;
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{
    ClientMsg, Config, ConnId, Duration, Encoding, Event, Gathering, GatheringId, Inbound, Instant,
};

struct Counting;

thread_local! {
    // Per thread, so that tests running side by side do not count each
    // other's allocations (const-initialised: touching them never allocates).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated and not yet freed on this thread.
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn count(allocations: u64, bytes: i64) {
    // `try_with`: during thread teardown the slots may be gone.
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + allocations));
    let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + bytes));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(0, -(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(1, new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn processing_a_message_and_an_early_tick_does_not_allocate() {
    let t0 = Instant::from_millis(1);
    let mut g: Gathering<Tournament> =
        Gathering::new(GatheringId::parse("alloc").unwrap(), Config::default(), t0);
    g.handle(Event::Message(
        t0,
        Inbound::open_join(ConnId(1), Encoding::Postcard),
    ));
    while g.poll_action().is_some() {}
    let ack = ClientMsg::<TournamentOp>::Ack { seq: 0 };
    let frame = protocol::encode(&ack, Encoding::Postcard).unwrap();
    let inbound = Inbound::open_frame(ConnId(1), frame);
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

#[test]
fn a_gathering_whose_connections_left_gives_their_memory_back() {
    let t0 = Instant::from_millis(1);
    let mut g: Gathering<Tournament> =
        Gathering::new(GatheringId::parse("empty").unwrap(), Config::default(), t0);
    let join = |conn| Inbound::open_join(ConnId(conn), Encoding::Json);
    // Warm up: whatever the first join and leave grow (the action queue)
    // stays, as it would in a server.
    g.handle(Event::Message(t0, join(1)));
    g.handle(Event::Message(
        t0,
        Inbound::Leave {
            conn: ConnId(1),
            clean: false,
        },
    ));
    while g.poll_action().is_some() {}
    let before = LIVE_BYTES.with(Cell::get);
    for conn in 2..=5 {
        g.handle(Event::Message(t0, join(conn)));
    }
    assert!(LIVE_BYTES.with(Cell::get) > before, "joins hold memory");
    for conn in [4, 2, 5, 3] {
        g.handle(Event::Message(
            t0,
            Inbound::Leave {
                conn: ConnId(conn),
                clean: false,
            },
        ));
    }
    while g.poll_action().is_some() {}
    let kept = LIVE_BYTES.with(Cell::get) - before;
    assert_eq!(kept, 0, "bytes kept after every connection left");
    assert_eq!(g.connections(), 0);
}
