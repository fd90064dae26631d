//! One dispersal as the server reports it to the embedding program
//! ([`crate::Builder::on_dispersed`]): shared by the builder, which takes
//! the hook, and the runtime, which calls it.

use std::sync::Arc;
use std::time::Duration;

use gathering_core::{DisperseReason, GatheringId};

/// What [`crate::Builder::on_dispersed`] calls.
pub(crate) type DispersalHook = Arc<dyn Fn(&Dispersal) + Send + Sync>;

/// One dispersal, as [`crate::Builder::on_dispersed`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispersal {
    /// The gathering.
    pub id: GatheringId,
    /// Why it dispersed.
    pub reason: DisperseReason,
    /// How long after its deadline it was decided (zero for a shutdown).
    pub late: Duration,
    /// Its final op count.
    pub seq: u64,
}
