//! Sessions: which member each belongs to, which of its ops applied (so
//! that a retried op applies once), which connection carries it, and the
//! recent durable ops a resuming client is sent again. Saved after the
//! state in every snapshot, with the gathering's epoch; a gathering no
//! session ever joined has none of it, and its snapshots are the state
//! alone, as before sessions existed.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::presence::Presence;
use crate::commit::LogEntry;
use crate::config::SESSION_RECENT_OPS;
use crate::protocol::Frame;
use crate::{ConnId, ConnMap, SessionId};

/// Every session a gathering remembers, and what goes with them: `P` is
/// the app's presence.
#[derive(Debug)]
pub(super) struct Sessions<P> {
    /// By name: an ordered map, so that snapshots list them in one order.
    table: BTreeMap<SessionId, Remembered>,
    /// The session each connection joined with.
    conns: ConnMap<SessionId>,
    /// Activity counter: each join and op of a session takes the next
    /// value, so the least recently active is the smallest.
    clock: u64,
    /// The latest ops handed to storage, as logged, oldest first: what a
    /// resume is served from once they are durable.
    history: VecDeque<LogEntry>,
    history_bytes: usize,
    /// Whether a durable snapshot holds the epoch: until one does, the
    /// next commit is a snapshot, so a client never resumes on an epoch a
    /// restart would not give again.
    pub epoch_saved: bool,
    /// Retries of ops whose first commit is still under way: acked, with
    /// the first seq, once it is durable. (seq, connection, op id).
    pub echoes: Vec<(u64, ConnId, u64)>,
    /// Connections resynced with a state that holds ops not yet durable.
    pub resyncs: Vec<Resync>,
    /// Who is here.
    pub presence: Presence<P>,
}

impl<P> Default for Sessions<P> {
    fn default() -> Self {
        Sessions {
            table: BTreeMap::new(),
            conns: ConnMap::default(),
            clock: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            epoch_saved: false,
            echoes: Vec::new(),
            resyncs: Vec::new(),
            presence: Presence::default(),
        }
    }
}

/// A `resync` whose state holds ops not yet durable: sent once they are
/// (a client must never see an op a crash could take back), and the
/// forwards of those ops are not sent to it.
#[derive(Debug)]
pub(super) struct Resync {
    pub conn: ConnId,
    /// The last op the state holds.
    pub seq: u64,
    /// The message, until it is sent.
    pub frame: Option<Frame>,
}

/// One remembered session.
#[derive(Debug)]
struct Remembered {
    /// The member it belongs to (its id).
    member: String,
    /// The highest op id applied from it.
    last_op: Option<u64>,
    /// Its latest applied ops: (op id, seq), oldest first.
    recent: VecDeque<(u64, u64)>,
    /// When it was last active, on `Sessions::clock`.
    active: u64,
    /// The connection carrying it now.
    conn: Option<ConnId>,
}

/// What a session's op id says about the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not applied yet: evaluate it.
    Fresh,
    /// Applied already, as op number `seq`.
    Applied(u64),
    /// Below the highest applied id and no longer remembered.
    Stale,
}

/// A session as a snapshot holds it; `recent` as differences from the
/// entry before (small numbers, a byte or two each in postcard).
#[derive(Serialize, Deserialize)]
struct SavedSession {
    name: String,
    member: String,
    last_op: Option<u64>,
    recent: Vec<(u64, u64)>,
    active: u64,
}

/// What follows the state in a snapshot of a gathering with sessions.
#[derive(Serialize, Deserialize)]
struct Saved {
    epoch: u64,
    clock: u64,
    sessions: Vec<SavedSession>,
}

impl<P> Sessions<P> {
    /// The member `session` belongs to, if it is remembered.
    pub fn owner(&self, session: &SessionId) -> Option<&str> {
        self.table.get(session).map(|r| r.member.as_str())
    }

    /// The session connection `conn` joined with.
    pub fn of(&self, conn: ConnId) -> Option<&SessionId> {
        self.conns.get(conn)
    }

    /// The presence, and the connections that joined with a session.
    pub fn presence_and_conns(&mut self) -> (&mut Presence<P>, &ConnMap<SessionId>) {
        (&mut self.presence, &self.conns)
    }

    /// Connection `conn` carries `session` of `member` from now on;
    /// returns the connection that carried it before, if another did.
    /// Past `max` sessions, the least recently active is forgotten.
    pub fn attach(
        &mut self,
        conn: ConnId,
        session: &SessionId,
        member: &str,
        max: u32,
    ) -> Option<ConnId> {
        self.conns.insert(conn, session.clone());
        let active = self.tick();
        let record = self.remember(session, member, max);
        record.active = active;
        record.conn.replace(conn).filter(|&old| old != conn)
    }

    /// Connection `conn` is gone.
    pub fn detach(&mut self, conn: ConnId) {
        if let Some(session) = self.conns.remove(conn)
            && let Some(record) = self.table.get_mut(&session)
            && record.conn == Some(conn)
        {
            record.conn = None;
        }
        self.resyncs.retain(|r| r.conn != conn);
    }

    /// The highest op id applied from `session`.
    pub fn last_op(&self, session: &SessionId) -> Option<u64> {
        self.table.get(session).and_then(|r| r.last_op)
    }

    /// What op `id` of `session` is.
    pub fn seen(&self, session: &SessionId, id: u64) -> Seen {
        let Some(record) = self.table.get(session) else {
            return Seen::Fresh;
        };
        match record.last_op {
            Some(last) if id <= last => record
                .recent
                .iter()
                .rev()
                .find(|(op, _)| *op == id)
                .map_or(Seen::Stale, |&(_, seq)| Seen::Applied(seq)),
            _ => Seen::Fresh,
        }
    }

    /// Op `id` of `session` (of `member`) applied as op number `seq`.
    pub fn applied(&mut self, session: &SessionId, member: &str, id: u64, seq: u64, max: u32) {
        let active = self.tick();
        let record = self.remember(session, member, max);
        record.active = active;
        record.last_op = Some(id);
        if record.recent.len() == SESSION_RECENT_OPS {
            record.recent.pop_front();
        }
        record.recent.push_back((id, seq));
    }

    /// Keeps `entry` (handed to storage) for resumes, within `max_ops`
    /// entries and `max_bytes` bytes.
    pub fn logged(&mut self, entry: LogEntry, max_ops: u32, max_bytes: u32) {
        self.history_bytes += entry.bytes.len();
        self.history.push_back(entry);
        while self.history.len() > max_ops as usize || self.history_bytes > max_bytes as usize {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= old.bytes.len();
        }
    }

    /// The logged ops numbered `since + 1 ..= upto`, if every one is still
    /// kept.
    pub fn history(&self, since: u64, upto: u64) -> Option<impl Iterator<Item = &LogEntry>> {
        if since == upto {
            return Some(self.history.range(0..0));
        }
        let first = self.history.front()?.seq;
        let last = self.history.back()?.seq;
        if since < first.saturating_sub(1) || upto > last || since > upto {
            return None;
        }
        let start = usize::try_from(since + 1 - first).ok()?;
        let end = usize::try_from(upto + 1 - first).ok()?;
        Some(self.history.range(start..end))
    }

    /// The record of `session`, made for `member` if it is new.
    fn remember(&mut self, session: &SessionId, member: &str, max: u32) -> &mut Remembered {
        if !self.table.contains_key(session) && self.table.len() >= max.max(1) as usize {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(_, r)| r.active)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.table.remove(&oldest);
            }
        }
        self.table
            .entry(session.clone())
            .or_insert_with(|| Remembered {
                member: member.to_owned(),
                last_op: None,
                recent: VecDeque::new(),
                active: 0,
                conn: None,
            })
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The bytes that follow the state in a snapshot.
    pub fn save(&self, epoch: u64) -> Result<Vec<u8>, postcard::Error> {
        let sessions = self
            .table
            .iter()
            .map(|(name, r)| {
                let mut before = (0, 0);
                let recent = r
                    .recent
                    .iter()
                    .map(|&(id, seq)| {
                        let step = (id - before.0, seq - before.1);
                        before = (id, seq);
                        step
                    })
                    .collect();
                SavedSession {
                    name: name.to_string(),
                    member: r.member.clone(),
                    last_op: r.last_op,
                    recent,
                    active: r.active,
                }
            })
            .collect();
        postcard::to_allocvec(&Saved {
            epoch,
            clock: self.clock,
            sessions,
        })
    }

    /// Sessions as `save` wrote them, with their epoch.
    pub fn load(bytes: &[u8]) -> Result<(Self, u64), String> {
        let saved: Saved = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        let mut sessions = Sessions {
            clock: saved.clock,
            epoch_saved: true,
            ..Sessions::default()
        };
        for s in saved.sessions {
            let name = SessionId::parse(&s.name).map_err(|e| e.to_string())?;
            let mut at = (0u64, 0u64);
            let mut recent = VecDeque::with_capacity(s.recent.len());
            for (id, seq) in s.recent {
                at = (at.0.saturating_add(id), at.1.saturating_add(seq));
                recent.push_back(at);
            }
            sessions.table.insert(
                name,
                Remembered {
                    member: s.member,
                    last_op: s.last_op,
                    recent,
                    active: s.active,
                    conn: None,
                },
            );
        }
        Ok((sessions, saved.epoch))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn s(name: &str) -> SessionId {
        SessionId::parse(name).unwrap()
    }

    #[test]
    fn an_op_is_fresh_applied_or_stale_and_the_oldest_session_goes_first() {
        let mut sessions = Sessions::<()>::default();
        assert_eq!(sessions.seen(&s("a"), 1), Seen::Fresh);
        for id in 1..=300 {
            sessions.applied(&s("a"), "Ada", id * 2, id + 1000, 2);
        }
        assert_eq!(sessions.seen(&s("a"), 600), Seen::Applied(1300));
        assert_eq!(sessions.seen(&s("a"), 88), Seen::Stale, "forgotten");
        assert_eq!(sessions.seen(&s("a"), 599), Seen::Stale, "never applied");
        assert_eq!(sessions.seen(&s("a"), 601), Seen::Fresh);
        sessions.attach(ConnId(1), &s("b"), "Bob", 2);
        sessions.applied(&s("a"), "Ada", 700, 2000, 2);
        sessions.attach(ConnId(2), &s("c"), "Cy", 2);
        assert_eq!(sessions.owner(&s("b")), None, "least recently active");
        assert_eq!(sessions.owner(&s("a")), Some("Ada"));

        let bytes = sessions.save(77).unwrap();
        let (loaded, epoch) = Sessions::<()>::load(&bytes).unwrap();
        assert_eq!(epoch, 77);
        assert_eq!(loaded.seen(&s("a"), 700), Seen::Applied(2000));
        assert_eq!(loaded.seen(&s("a"), 88), Seen::Stale);
        assert_eq!(loaded.seen(&s("a"), 92), Seen::Applied(1046));
        assert_eq!(loaded.owner(&s("c")), Some("Cy"));
        assert_eq!(loaded.clock, sessions.clock);
    }

    #[test]
    fn history_serves_a_range_only_when_it_holds_all_of_it() {
        let mut sessions = Sessions::<()>::default();
        for seq in 1..=10 {
            let entry = LogEntry {
                seq,
                bytes: vec![0; 10],
            };
            sessions.logged(entry, 5, 1000);
        }
        fn seqs(sessions: &Sessions<()>, since: u64, upto: u64) -> Option<Vec<u64>> {
            sessions
                .history(since, upto)
                .map(|h| h.map(|e| e.seq).collect())
        }
        assert_eq!(seqs(&sessions, 5, 10), Some(vec![6, 7, 8, 9, 10]));
        assert_eq!(seqs(&sessions, 7, 9), Some(vec![8, 9]));
        assert_eq!(seqs(&sessions, 10, 10), Some(vec![]));
        assert_eq!(seqs(&sessions, 4, 10), None, "op 5 is gone");
        assert_eq!(seqs(&sessions, 5, 11), None, "op 11 is not there yet");
        sessions.logged(
            LogEntry {
                seq: 11,
                bytes: vec![0; 35],
            },
            5,
            50,
        );
        assert_eq!(seqs(&sessions, 9, 11), Some(vec![10, 11]), "bytes bound");
        assert_eq!(seqs(&sessions, 8, 11), None);
    }
}
