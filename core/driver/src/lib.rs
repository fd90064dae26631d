//! The run loop every gathering host shares, written once over a small
//! [`Runtime`] trait.
//!
//! `gathering-core` holds the sans-IO state machines; this crate drives them
//! with futures: one task per gathering (a mailbox, one timer, batching,
//! carrying out actions, publishing its [`Status`]) and one hall shared by
//! the host's tasks under the host's lock ([`HallState`]), fed connections'
//! traffic by [`hall_task`]. A host implements [`Runtime`]: its clock, its
//! timer, its connection handle ([`Conn`]), its storage (load and persist,
//! which may group commits across gatherings), how it runs a future, and
//! what it observes. The driver spawns nothing itself: it hands the host
//! what to run ([`Runtime::spawn`], [`hall_task`]) and depends on no
//! runtime, only on futures-channel and async-channel.
//!
//! # The loop of one gathering
//! [`GatheringLoop::run`] is, in order:
//! 1. arm the one timer at [`gathering_core::Gathering::next_deadline`] if
//!    that is earlier than what is armed;
//! 2. wait for the first of mail and the timer (mail first; after 64
//!    wake-ups in a row served by mail the clock is read, so a due retry
//!    waits at most that long);
//! 3. feed up to 64 mails, or a tick, to the core, stamped with
//!    [`Runtime::now`];
//! 4. carry out every action: frames and closes to [`Conn`]s, snapshots to
//!    [`Runtime::persist`], a dispersal request decided at once under the
//!    hall's lock, bounces back to the hall;
//! 5. publish its status; once dispersed, hand leftover mail to the hall
//!    for the successor and end.
//!
//! **A gathering never disperses while a message the hall routed to it is
//! unprocessed, and nothing routed during a dispersal is lost**: the hall
//! grants only when the gathering has processed everything routed to it,
//! buffers what comes next, and hands it to a successor loaded from the
//! final snapshot.
//!
//! # A whole host
//! A single-threaded host with memory storage, a fake clock and a timer
//! that never fires, running one op end to end:
//!
//! ```
//! use std::cell::{Cell, RefCell, RefMut};
//! use std::collections::BTreeMap;
//! use std::rc::Rc;
//! use std::task::{Context, Poll};
//!
//! use futures_executor::LocalPool;
//! use futures_util::task::LocalSpawnExt;
//! use gathering_core::{App, Commit, Config, ConnId, Deadline, Delivery, Encoding, Frame};
//! use gathering_core::{GatheringId, Inbound, Instant, Loaded, Member, Rejection};
//! use gathering_driver::{
//!     Conn, Durable, GatheringLoop, HallMail, HallState, Loading, Runtime, hall_task,
//! };
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Tally(u64);
//! impl App for Tally {
//!     const NAME: &'static str = "tally";
//!     type Op = ();
//!     type Presence = ();
//!     fn apply(&mut self, _by: &Member, _op: &()) -> Result<(), Rejection> {
//!         self.0 += 1;
//!         Ok(())
//!     }
//! }
//!
//! /// A connection: frames land in a list the test reads.
//! #[derive(Clone, Default)]
//! struct Inbox(Rc<RefCell<Vec<Frame>>>);
//! impl Conn for Inbox {
//!     fn send(&self, frame: Frame, _: Delivery) -> bool {
//!         self.0.borrow_mut().push(frame);
//!         true
//!     }
//!     fn close(&self, _code: u16, _reason: &'static str) {}
//! }
//!
//! struct Inner {
//!     now: Cell<Instant>,
//!     config: std::sync::Arc<Config>,
//!     hall: RefCell<HallState<Host>>,
//!     store: RefCell<BTreeMap<GatheringId, Loaded>>,
//!     spawner: futures_executor::LocalSpawner,
//! }
//! #[derive(Clone)]
//! struct Host(Rc<Inner>);
//!
//! impl Runtime for Host {
//!     type App = Tally;
//!     type Conn = Inbox;
//!     type Timer = ();
//!     type HallGuard<'a> = RefMut<'a, HallState<Host>>;
//!     fn now(&self) -> Instant { self.0.now.get() }
//!     fn poll_timer(&self, _: &mut (), _: Deadline, _: &mut Context<'_>) -> Poll<()> {
//!         Poll::Pending
//!     }
//!     fn config(&self) -> &std::sync::Arc<Config> { &self.0.config }
//!     fn hall(&self) -> RefMut<'_, HallState<Host>> { self.0.hall.borrow_mut() }
//!     fn load(&self, loading: Loading<Host>) {
//!         // Finished later, never from inside this call (the hall is locked).
//!         let loaded = self.0.store.borrow().get(loading.id()).cloned().unwrap_or_default();
//!         let _ = self.0.spawner.spawn_local(async move { loading.finish(Ok(loaded)) });
//!     }
//!     fn persist(&self, id: &GatheringId, commit: Commit, durable: Durable<Inbox>) {
//!         self.0.store.borrow_mut().entry(id.clone()).or_default().apply(commit);
//!         durable.report(Ok(()));
//!     }
//!     fn spawn(&self, task: GatheringLoop<Host>) {
//!         let _ = self.0.spawner.spawn_local(task.run());
//!     }
//! }
//!
//! let mut pool = LocalPool::new();
//! let (hall, settled) = HallState::new();
//! let host = Host(Rc::new(Inner {
//!     now: Cell::new(Instant::ZERO),
//!     config: Config::default().into(),
//!     hall: RefCell::new(hall),
//!     store: RefCell::default(),
//!     spawner: pool.spawner(),
//! }));
//! let (to_hall, mailbox) = async_channel::unbounded();
//! pool.spawner().spawn_local(hall_task(host.clone(), mailbox, settled)).unwrap();
//!
//! let id = GatheringId::parse("room").unwrap();
//! let inbox = Inbox::default();
//! let join = Inbound::open_join(ConnId(1), Encoding::Json);
//! to_hall.try_send(HallMail::Route(id.clone(), join, Some(inbox.clone()))).unwrap();
//! let op = Frame::Text(r#"{"type":"op","id":7,"op":null}"#.into());
//! to_hall.try_send(HallMail::Route(id.clone(), Inbound::open_frame(ConnId(1), op), None)).unwrap();
//! pool.run_until_stalled();
//!
//! assert_eq!(inbox.0.borrow().as_slice(), [Frame::Text(r#"{"type":"ack","id":7,"seq":1}"#.into())]);
//! // What was written is the op, not the state.
//! let stored = host.0.store.borrow()[&id].clone();
//! assert_eq!((stored.seq(), stored.log.len(), stored.snapshot), (1, 1, None));
//!
//! // Shutdown: the gathering persists and disperses, then the hall's task ends.
//! to_hall.try_send(HallMail::Shutdown).unwrap();
//! pool.run();
//! assert!(host.hall().finished());
//! // Everything was durable already: the dispersal wrote nothing more.
//! assert_eq!(host.0.store.borrow()[&id].log.len(), 1);
//! ```

mod gathering_task;
mod hall;
mod mail;
mod runtime;
mod status;

pub use gathering_task::GatheringLoop;
pub use hall::{HallState, Loading, Settled, hall_task};
pub use mail::{Durable, FailedWrites, HallMail, Mail, Mailbox};
pub use runtime::{Conn, Observed, Runtime, StoreError};
pub use status::Status;
