//! What a host supplies: its clock, its timer, its connections, its storage,
//! its lock around the hall, a way to run futures, and what it observes.

use std::ops::DerefMut;
use std::sync::Arc;
use std::task::{Context, Poll};

use gathering_core::{
    App, Commit, Config, Deadline, Delivery, DisperseReason, Duration, Frame, GatheringId, Instant,
};

use crate::gathering_task::GatheringLoop;
use crate::hall::{HallState, Loading};
use crate::mail::Durable;
use crate::status::Status;

/// A storage failure, saying what was being done: what both hosts' stores
/// return, and what [`Durable::report`] and [`crate::Loading::finish`] are
/// given as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// A connection as a gathering sees it: somewhere to write frames.
///
/// Contract: neither method blocks or waits; both may be called after the
/// connection went away (they then do nothing).
pub trait Conn: 'static {
    /// Queues `frame`. Returns `false` if the connection is gone (or was
    /// just closed for not keeping up); the gathering then forgets it. A
    /// [`Delivery::Retried`] frame may be dropped when the connection's
    /// queue is full: the gathering re-sends it until acknowledged.
    fn send(&self, frame: Frame, delivery: Delivery) -> bool;

    /// Closes the connection with a WebSocket `code` and `reason`, once.
    fn close(&self, code: u16, reason: &'static str);

    /// One frame from this connection reached the gathering (any reply to
    /// it is queued by the time the gathering's wake-up ends). A host that
    /// bounds how many frames a reader may have on the way counts them down
    /// here.
    fn received(&self) {}
}

/// Something the driver did that a host may log, count or publish.
#[derive(Debug)]
pub enum Observed<'a> {
    /// A gathering was loaded (`seq` ops in its state) and started; `status`
    /// is what it publishes about itself until it disperses.
    Spawned {
        /// The gathering.
        id: &'a GatheringId,
        /// Its op count at load.
        seq: u64,
        /// Its published status.
        status: &'a Arc<Status>,
    },
    /// A gathering could not be loaded; its waiting connections were closed.
    SpawnFailed {
        /// The gathering.
        id: &'a GatheringId,
        /// Why.
        error: &'a str,
    },
    /// A write failed; the gathering retries after its retry interval.
    PersistFailed {
        /// The gathering.
        id: &'a GatheringId,
        /// Why.
        error: &'a str,
    },
    /// A gathering asked the hall to disperse.
    DisperseRequested {
        /// The gathering.
        id: &'a GatheringId,
        /// Why.
        reason: DisperseReason,
        /// Messages it had processed.
        processed: u64,
    },
    /// A gathering dispersed: its final state is durable, its connections
    /// were told and closed, and its task ends.
    Dispersed {
        /// The gathering.
        id: &'a GatheringId,
        /// Why.
        reason: DisperseReason,
        /// How long after its deadline the dispersal was decided (zero for
        /// a shutdown).
        late: Duration,
        /// Its final op count.
        seq: u64,
    },
    /// A shutdown began with this many live gatherings.
    ShuttingDown {
        /// Live gatherings.
        gatherings: usize,
    },
    /// A gathering refused a request of one of its connections (see
    /// `Action::Refused`): for counters.
    Refused {
        /// The gathering.
        id: &'a GatheringId,
        /// The error's code, or `full`, `flood` or `lagging` for a close.
        code: &'static str,
    },
    /// The hall delivered to a gathering whose mailbox was gone; the
    /// connection was closed. Not expected: a sign of a bug.
    Unavailable {
        /// The gathering.
        id: &'a GatheringId,
    },
}

/// A host, as the driver sees it. Implemented once per host (and by the
/// tests' fake host); a cheap handle, cloned into every task.
///
/// # What a runtime must do
/// - [`Runtime::now`] is monotonic. The driver stamps every input with it.
/// - [`Runtime::poll_timer`] is `Ready` only once `deadline.at` has passed
///   on that clock (an early wake-up costs a round, never a wrong decision:
///   the core decides on the time it is given), and until then arranges for
///   the task of `cx` to be woken no later than the deadline.
/// - [`Runtime::hall`] locks the one [`HallState`] of the host. The driver
///   never holds it across an await, and never calls into the runtime's
///   storage or spawning while it holds it in a way that would lock it again
///   **synchronously**: `load`, `persist` and `spawn` must not call back
///   into the driver before they return (start the work, finish later).
/// - `load` and `persist` answer exactly once, through the handle they are
///   given, from any task, in any order across gatherings.
/// - `spawn` runs the future to completion (it ends by itself once its
///   gathering has dispersed).
/// - A [`Conn`] never calls into the driver from `send` or `close`; a host
///   whose connection must report its own close does so by mail to the
///   hall ([`crate::HallMail::Route`] with a leave), which is never a
///   synchronous call.
///
/// # What a runtime may not rely on
/// Nothing runs between the driver's calls into [`gathering_core::Gathering`]:
/// `Gathering::handle` is never called while its actions are being drained
/// except by the driver itself, with the verdict of a dispersal request.
pub trait Runtime: Clone + 'static {
    /// The application every gathering of this host runs.
    type App: App;
    /// A connection's handle.
    type Conn: Conn;
    /// One gathering's timer state, armed at one deadline at a time.
    type Timer: Default;
    /// The hall, locked.
    type HallGuard<'a>: DerefMut<Target = HallState<Self>>
    where
        Self: 'a;

    /// The current time.
    fn now(&self) -> Instant;

    /// Ready once `deadline` has passed; see the trait's contract.
    fn poll_timer(
        &self,
        timer: &mut Self::Timer,
        deadline: Deadline,
        cx: &mut Context<'_>,
    ) -> Poll<()>;

    /// The tunables of every gathering, shared by all of them (one
    /// allocation per host, not a copy per gathering).
    fn config(&self) -> &Arc<Config>;

    /// Locks the hall.
    fn hall(&self) -> Self::HallGuard<'_>;

    /// Loads gathering `loading.id()` and hands the result to
    /// [`Loading::finish`].
    fn load(&self, loading: Loading<Self>);

    /// Writes `commit` for gathering `id` durably, as [`Commit`] says a
    /// store must, and reports the outcome with [`Durable::report`].
    fn persist(&self, id: &GatheringId, commit: Commit, durable: Durable<Self::Conn>);

    /// Runs a gathering's task.
    fn spawn(&self, task: GatheringLoop<Self>);

    /// A value never returned before for this host's store, for a
    /// gathering whose store holds no epoch
    /// ([`gathering_core::Gathering::offer_epoch`]): a gathering created
    /// anew (a wiped or restored store) then shows its clients another
    /// epoch. By default the host clock's microseconds, which suits only a
    /// store that lives no longer than the clock (a test's); hosts with a
    /// durable store use the wall clock.
    fn fresh_epoch(&self) -> u64 {
        self.now().as_nanos() / 1000
    }

    /// Called after each batch of mail a gathering handled, with the number
    /// of messages from connections in it and the gathering's timer (a host
    /// counts them; a benchmark host may re-arm a timer per batch).
    fn handled(&self, _timer: &mut Self::Timer, _inbound: u32) {}

    /// Something happened that the host may log, count or publish.
    fn observe(&self, _what: Observed<'_>) {}
}
