//! What a gathering writes and what it is loaded from: an op log with
//! snapshots that compact it.
//!
//! A commit normally carries only the ops accepted since the previous one,
//! so making an op durable costs that op, not the state. Once the log since
//! the last snapshot passes a bound ([`crate::Config::snapshot_ops`],
//! [`crate::Config::snapshot_bytes`]), or when a gathering closes with ops
//! not yet durable, a commit carries a snapshot instead, which covers every
//! older entry: from that write on, the store no longer loads those (it
//! may delete them in the same write or later). A gathering is loaded from
//! its latest snapshot and the entries after it.

use serde::Serialize;

use crate::{ConnId, Member, SessionId};

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
/// other commits of the same group; with a snapshot, the gathering's log
/// entries up to `seq` are covered from that same write on, never loaded
/// again (deleted then or later). Afterwards a load returns the snapshot
/// and the entries after it.
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

/// A log entry: a zero, then the member who sent the op, then the op; or,
/// for an open server's member (no role, named after its connection), that
/// connection's id (never zero) and the op. The second is the first log
/// format, which still loads as it always did, and stays the cheaper one
/// for open servers, which log an op every time.
#[derive(Serialize)]
struct EntryRef<'a, O> {
    format: u8,
    by: &'a Member,
    op: &'a O,
}

/// Encodes op `op` sent by `by` as a log entry's bytes.
pub fn encode_entry<O: Serialize>(by: &Member, op: &O) -> Result<Vec<u8>, postcard::Error> {
    match open_conn(by) {
        Some(conn) => postcard::to_allocvec(&(conn, op)),
        None => postcard::to_allocvec(&EntryRef { format: 0, by, op }),
    }
}

/// The connection id an open server's member is named after, if `by` is
/// one (and its name reads back as exactly that member).
fn open_conn(by: &Member) -> Option<u64> {
    let conn = by.id.strip_prefix("conn-")?.parse::<u64>().ok()?;
    (by.role.is_none() && conn != 0 && Member::open(ConnId(conn)) == *by).then_some(conn)
}

/// Encodes op `op` sent by `by` from session `session` under op id `id`:
/// the zero format followed by the session and the id, so that a replay
/// knows again which of the session's ops applied. (An entry without them
/// ends after its op; the ones written before sessions existed still load.)
pub fn encode_session_entry<O: Serialize>(
    by: &Member,
    op: &O,
    session: &SessionId,
    id: u64,
) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&(EntryRef { format: 0, by, op }, session.as_str(), id))
}

/// A decoded log entry: who sent the op, the op, and, if it came with a
/// session, that session and the op's id in it.
pub type Entry<O> = (Member, O, Option<(String, u64)>);

/// Decodes a log entry's bytes: who sent the op, and the op.
pub fn decode_entry<O: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(Member, O), postcard::Error> {
    decode_session_entry(bytes).map(|(by, op, _)| (by, op))
}

/// Decodes a log entry's bytes, with its session if it has one.
pub fn decode_session_entry<O: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<Entry<O>, postcard::Error> {
    match postcard::take_from_bytes::<u64>(bytes)? {
        (0, rest) => match postcard::take_from_bytes::<(Member, O)>(rest)? {
            ((by, op), []) => Ok((by, op, None)),
            ((by, op), rest) => {
                let session = postcard::from_bytes::<(String, u64)>(rest)?;
                Ok((by, op, Some(session)))
            }
        },
        (conn, rest) => {
            postcard::from_bytes::<O>(rest).map(|op| (Member::open(ConnId(conn)), op, None))
        }
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    #[test]
    fn entries_carry_their_member_and_the_first_format_still_loads() {
        let ada = Member::new("Ada", "player");
        let bytes = encode_entry(&ada, &"op".to_string()).unwrap();
        assert_eq!(
            decode_entry::<String>(&bytes).unwrap(),
            (ada.clone(), "op".into())
        );
        // An open server's member is logged as its connection, as before;
        // a name that only looks like one is logged as a name.
        let open = Member::open(ConnId(300));
        let bytes = encode_entry(&open, &"op".to_string()).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&(300u64, "op")).unwrap());
        for member in [
            open,
            Member::new("conn-300", "player"),
            Member {
                id: "conn-0300".into(),
                role: None,
            },
        ] {
            let bytes = encode_entry(&member, &"op".to_string()).unwrap();
            assert_eq!(
                decode_entry::<String>(&bytes).unwrap(),
                (member, "op".into())
            );
        }
        // With a session, the session and the op's id follow.
        let session = SessionId::parse("tab-1").unwrap();
        let bytes = encode_session_entry(&ada, &"op".to_string(), &session, 9).unwrap();
        assert_eq!(
            decode_session_entry::<String>(&bytes).unwrap(),
            (ada.clone(), "op".into(), Some(("tab-1".into(), 9)))
        );
        assert_eq!(decode_entry::<String>(&bytes).unwrap(), (ada, "op".into()));
        // The first format: the sender's connection id, then the op.
        let legacy = postcard::to_allocvec(&(300u64, "op".to_string())).unwrap();
        assert_eq!(
            decode_entry::<String>(&legacy).unwrap(),
            (Member::open(ConnId(300)), "op".into())
        );
    }
}
