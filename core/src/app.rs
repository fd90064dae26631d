//! The application a gathering hosts.

use core::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::Member;

/// Application state hosted by a gathering: what an app author implements.
///
/// Contract: [`App::apply`] either applies the op and returns `Ok`, or returns
/// a [`Rejection`] and leaves the state exactly as it was, and it is **a
/// deterministic function of the state, the op and its sender** (the
/// [`Member`], id and role, that the host authenticated): no clock,
/// no randomness, no outside input. Durability relies on it: what is
/// written is the log of accepted ops, and a gathering is loaded by
/// applying them again to its last snapshot. The whole state is the
/// snapshot: it is persisted and restored through serde, so `Default` must
/// be the state of a gathering that was never persisted. The state and the op
/// travel as tagged JSON in text frames and as postcard in binary frames;
/// declare an op enum with [`wire_enum!`](crate::wire_enum) to get both
/// shapes from one definition.
///
/// ```
/// use gathering_core::{App, Member, Rejection, wire_enum};
/// use serde::{Deserialize, Serialize};
///
/// wire_enum! {
///     /// What a client may ask of a [`Counter`].
///     #[derive(Clone, Debug, PartialEq)]
///     pub enum CounterOp {
///         Add { by: u32 },
///     }
/// }
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Counter { total: u32 }
///
/// impl App for Counter {
///     const NAME: &'static str = "counter";
///     type Op = CounterOp;
///     type Presence = ();
///     fn apply(&mut self, _by: &Member, op: &CounterOp) -> Result<(), Rejection> {
///         let CounterOp::Add { by } = op;
///         self.total = self.total.checked_add(*by)
///             .ok_or_else(|| Rejection::new("overflow", "the counter is full"))?;
///         Ok(())
///     }
/// }
/// ```
pub trait App: Default + Serialize + DeserializeOwned + 'static {
    /// The application's storage namespace: stores keep each app's
    /// gatherings apart under it, so two apps sharing a data directory never
    /// read each other's snapshots. Stable for the life of the data, 1 to
    /// 64 characters of `[a-z0-9_-]`.
    const NAME: &'static str;

    /// One operation a client may ask for.
    type Op: Serialize + DeserializeOwned + 'static;

    /// What a member shows the others while connected (a cursor, "typing"):
    /// never persisted, never in the op log; `()` for none. Bounded on the
    /// wire by the host (`--max-presence-bytes`).
    type Presence: Serialize + DeserializeOwned + Clone + 'static;

    /// Applies `op` on behalf of member `by`; refuses what `by` may not do
    /// with code [`FORBIDDEN`](crate::protocol::FORBIDDEN), changing nothing.
    fn apply(&mut self, by: &Member, op: &Self::Op) -> Result<(), Rejection>;

    /// Whether `member` may join (fetch the state and receive forwards); by
    /// default anyone the host let in may. A refusal is sent to the
    /// connection as an `error`, which is then closed with 1008. Not asked
    /// for an open server's members, who have every right.
    fn admit(&self, member: &Member) -> Result<(), Rejection> {
        let _ = member;
        Ok(())
    }
}

/// Why an op was refused: a stable machine-readable `code` and a sentence for
/// the person who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Stable, snake_case, for programs (`"duplicate_player"`).
    pub code: &'static str,
    /// For people (`"a player named Ada is already registered"`).
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}
