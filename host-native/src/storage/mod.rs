//! Where gatherings live between spawns: the store, and the writer thread
//! that groups every gathering's pending snapshot into one commit.

mod journal;
pub(crate) mod persist;
mod store;

pub use store::{Fenced, RedbStore, Store, StoreError, Write};
