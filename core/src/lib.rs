//! Sans-IO state machines for **gatherings**: one in-memory actor per live
//! room (a tournament, say) holding its state and the connections following
//! it, and the **hall** that routes connections to gatherings, spawns them on
//! demand and agrees to their dispersal.
//!
//! This crate reads no clock, spawns nothing, and touches no socket or file; it
//! depends on no async runtime. Time comes in with every input
//! ([`Event::Tick`]`(now)`, [`Event::Message`]`(now, ..)`), outputs are drained
//! one at a time ([`Gathering::poll_action`]), and the machine says when it
//! next needs a tick ([`Gathering::next_deadline`]). Hosts supply the clock,
//! the sockets and the storage; `gathering-driver` is the run loop they
//! share.
//!
//! An application is a type implementing [`App`], its op enum declared with
//! [`wire_enum!`]. Two ship with the crate, each behind a feature of its
//! name: `tournament`, the reference app, and `chat`, a room with a bounded
//! history.
//!
//! # Run loop
//! Every host drives a gathering the same way:
//!
//! ```
//! use gathering_core::{Action, App, Config, Event, Gathering, GatheringId, Instant, Member, Rejection};
//!
//! // Any application: here a room that only counts its ops.
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
//! let id = GatheringId::parse("spring-open").unwrap();
//! let mut now = Instant::ZERO;
//! let mut g: Gathering<Tally> = Gathering::new(id, Config::default(), now);
//! loop {
//!     // 1. wait for the first of (timer at the deadline, mailbox); here the
//!     //    timer always wins, so jump the clock straight to it.
//!     let Some(deadline) = g.next_deadline() else { break };
//!     now = deadline.at;
//!     g.handle(Event::Tick(now));
//!     // 2. carry out every action.
//!     while let Some(action) = g.poll_action() {
//!         match action {
//!             // Ask the hall; its verdict comes back as Event::Verdict.
//!             Action::Disperse { .. } => g.handle(Event::Verdict(now, gathering_core::Verdict::Granted)),
//!             Action::Dispersed { reason } => println!("dispersed: {reason}"),
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(now, Instant::ZERO + Config::default().idle_timeout);
//! ```

mod app;
#[cfg(feature = "chat")]
pub mod chat;
pub mod client;
pub mod clock;
pub mod commit;
mod config;
mod conn;
mod events;
mod gathering;
mod hall;
mod id;
mod member;
pub mod protocol;
#[cfg(feature = "tournament")]
pub mod tournament;
mod wire;

/// The Rust blocks of README.md and docs/ compile as doctests: docs that
/// cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
#[doc = include_str!("../../docs/PROTOCOL.md")]
#[doc = include_str!("../../docs/HARDENING.md")]
struct DocsCompile;

pub use app::{App, Rejection};
pub use clock::{Duration, Instant};
pub use commit::{Commit, Loaded, LogEntry, Snapshot};
pub use config::{
    Config, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_PRESENCE_BYTES, DEFAULT_MAX_SESSIONS,
    DEFAULT_PRESENCE_GRACE, DEFAULT_RETRY_INTERVAL, DEFAULT_SNAPSHOT_BYTES, DEFAULT_SNAPSHOT_OPS,
    RETRY_BACKOFF_CAP,
};
pub use conn::ConnMap;
pub use events::{Action, Deadline, Delivery, Event, Inbound, SessionJoin, Verdict, Why};
pub use gathering::{Gathering, NOT_DURABLE, Phase, RestoreError, STORAGE_FAILED};
pub use hall::{Hall, HallAction, HallEvent, RejectReason};
pub use id::{ConnId, GatheringId, IdError, MAX_ID_LEN, SessionId, SessionIdError};
pub use member::{Member, SharedMember};
pub use protocol::{ClientMsg, DisperseReason, Encoding, Frame, ServerMsg};
