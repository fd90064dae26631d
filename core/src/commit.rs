//! What a gathering writes and what it is loaded from: an op log with
//! snapshots that compact it.
//!
//! A commit normally carries only the ops accepted since the previous one,
//! so making an op durable costs that op, not the state. Once the log since
//! the last snapshot passes a bound ([`crate::Config::snapshot_ops`],
//! [`crate::Config::snapshot_bytes`]), or when a gathering closes with ops
//! not yet durable, a commit carries a snapshot instead, which covers every
//! older entry; the store deletes those in the same atomic write. A
//! gathering is loaded from its latest snapshot and the entries after it.

use serde::{Deserialize, Serialize};

use crate::ConnId;

/// One logged op: its number and its encoding (who sent it and the op,
/// postcard), everything `App::apply` needs to apply it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The op's number.
    pub seq: u64,
    /// [`encode_entry`]'s bytes.
    pub bytes: Vec<u8>,
}

/// The application state as of op `seq`, postcard-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The number of the last op it holds.
    pub seq: u64,
    /// The state's bytes.
    pub bytes: Vec<u8>,
}

/// One durable write a gathering asks for ([`crate::Action::Persist`]).
///
/// Contract for a store: write all of it or none of it, atomically with the
/// other commits of the same group; with a snapshot, also delete every log
/// entry of the gathering up to `seq` in that same write. Afterwards a load
/// returns the snapshot and the entries after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The number of the last op this write makes durable.
    pub seq: u64,
    /// The ops accepted since the last commit, in order (empty when
    /// `snapshot` is set: the snapshot holds them).
    pub log: Vec<LogEntry>,
    /// The whole state as of `seq`, when the log is compacted.
    pub snapshot: Option<Vec<u8>>,
}

impl Commit {
    /// Bytes this commit writes, keys aside.
    pub fn bytes(&self) -> usize {
        self.log.iter().map(|e| e.bytes.len()).sum::<usize>()
            + self.snapshot.as_ref().map_or(0, Vec::len)
    }
}

/// What a store holds of one gathering: its latest snapshot, if any, and
/// the log entries after it in order. `Loaded::default()` is a gathering
/// that was never persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// The entries after it, in order.
    pub log: Vec<LogEntry>,
}

impl Loaded {
    /// Applies `commit` as a store must (a memory store is exactly this):
    /// a snapshot replaces the snapshot and every entry it covers, log
    /// entries are appended.
    pub fn apply(&mut self, commit: Commit) {
        match commit.snapshot {
            Some(bytes) => {
                self.log.retain(|e| e.seq > commit.seq);
                self.snapshot = Some(Snapshot {
                    seq: commit.seq,
                    bytes,
                });
            }
            None => self.log.extend(commit.log),
        }
    }

    /// The number of the last op it holds.
    pub fn seq(&self) -> u64 {
        let logged = self.log.last().map(|e| e.seq);
        let snapshot = self.snapshot.as_ref().map(|s| s.seq);
        logged.max(snapshot).unwrap_or(0)
    }
}

#[derive(Serialize)]
struct EntryRef<'a, O> {
    by: u64,
    op: &'a O,
}

#[derive(Deserialize)]
struct EntryOwned<O> {
    by: u64,
    op: O,
}

/// Encodes op `op` sent by `by` as a log entry's bytes.
pub fn encode_entry<O: Serialize>(by: ConnId, op: &O) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&EntryRef { by: by.0, op })
}

/// Decodes a log entry's bytes: who sent the op, and the op.
pub fn decode_entry<O: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(ConnId, O), postcard::Error> {
    postcard::from_bytes::<EntryOwned<O>>(bytes).map(|e| (ConnId(e.by), e.op))
}
