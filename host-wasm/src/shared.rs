//! What every task of one in-page host shares.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use gathering_core::{Config, ConnId, GatheringId, Instant};

use crate::clock::Clock;
use crate::hall_task::HallMail;
use crate::storage::Storage;

/// State shared by the hall task, the gathering tasks and the JS handles of
/// one host. Single-threaded (the page's event loop), hence `Rc` and cells.
#[derive(Debug)]
pub struct Shared {
    /// The page's clock.
    pub clock: Clock,
    /// Tunables given to every gathering.
    pub config: Config,
    /// Frames larger than this close their connection with 1009.
    pub max_frame_bytes: usize,
    /// Where gatherings are loaded from and persisted to.
    pub storage: Storage,
    /// The hall task's mailbox.
    pub hall: async_channel::Sender<HallMail>,
    /// What `host.gatherings()` shows, by id (sorted: stable output).
    pub registry: RefCell<BTreeMap<GatheringId, Rc<Status>>>,
    /// Lateness of idle and empty dispersals not yet taken, in milliseconds.
    pub lateness: RefCell<Vec<f64>>,
    next_conn: Cell<u64>,
}

impl Shared {
    /// Shared state for a new host.
    pub fn new(
        clock: Clock,
        config: Config,
        max_frame_bytes: usize,
        storage: Storage,
        hall: async_channel::Sender<HallMail>,
    ) -> Self {
        Shared {
            clock,
            config,
            max_frame_bytes,
            storage,
            hall,
            registry: RefCell::new(BTreeMap::new()),
            lateness: RefCell::new(Vec::new()),
            next_conn: Cell::new(1),
        }
    }

    /// A connection id never used before by this host.
    pub fn new_conn(&self) -> ConnId {
        let n = self.next_conn.get();
        self.next_conn.set(n.wrapping_add(1));
        ConnId(n)
    }
}

/// What the page can see of one live gathering.
#[derive(Debug, Default)]
pub struct Status {
    /// Connections joined.
    pub connections: Cell<usize>,
    /// Last op count.
    pub seq: Cell<u64>,
    /// Last activity.
    pub last_activity: Cell<Instant>,
    /// When it disperses if nothing happens.
    pub idle_deadline: Cell<Instant>,
}
