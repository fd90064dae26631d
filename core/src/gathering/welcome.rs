//! A join with a session: the session's owner checked, the connection it
//! replaces closed, then `welcome`, then what the client missed: the ops
//! after its `since`, or the whole state in a `resync`.

use std::sync::Arc;

use crate::clock::Instant;
use crate::commit;
use crate::events::{Action, Delivery, SessionJoin};
use crate::protocol::{CLOSE_SESSION_MOVED, Encoding, Frame, ServerMsg};
use crate::{App, ConnId, Member, SessionId, SharedMember};

use super::replies::{encode_or_internal_error, reply, send_once};
use super::sessions::Resync;
use super::{EPOCH_MASK, Gathering};

/// Who a connection joining with `session` acts as: the member the host
/// authenticated, or on an open server the member named by its session,
/// so that its identity survives reconnects.
pub(super) fn session_member(member: Option<SharedMember>, session: &SessionId) -> SharedMember {
    member.unwrap_or_else(|| {
        Arc::new(Member {
            id: session.to_string(),
            role: None,
        })
    })
}

impl<A: App> Gathering<A> {
    /// Whether `session` belongs to someone other than `member`.
    pub(super) fn session_taken(&self, session: &SessionId, member: &Member) -> bool {
        self.sessions
            .as_ref()
            .and_then(|s| s.owner(session))
            .is_some_and(|owner| owner != member.id)
    }

    /// Connection `conn` (joined, as `member`) carries `join`'s session:
    /// the connection that carried it is closed, and `conn` is welcomed
    /// and caught up.
    pub(super) fn welcome(
        &mut self,
        now: Instant,
        conn: ConnId,
        encoding: Encoding,
        member: &Member,
        join: &SessionJoin,
    ) {
        if self.epoch == 0 {
            // No host offered one: the clock's reading stands in.
            self.epoch = ((now.as_nanos() / 1000) & EPOCH_MASK).max(1);
        }
        let max = self.config.max_sessions;
        let sessions = self.sessions.get_or_insert_default();
        let replaced = sessions.attach(conn, &join.session, &member.id, max);
        let last_op = sessions.last_op(&join.session);
        if let Some(old) = replaced
            && let Some(c) = self.conns.remove(old)
        {
            sessions.detach(old);
            // Its member stays present: the new connection is its own.
            if let Some(m) = c.member {
                self.absent(now, &m.id, false);
            }
            self.actions.push_back(Action::Close {
                conn: old,
                code: CLOSE_SESSION_MOVED,
                reason: "session resumed elsewhere",
            });
        }
        let welcome = ServerMsg::<(), ()>::Welcome {
            member: member.id.clone(),
            epoch: self.epoch,
            seq: self.durable,
            last_op,
        };
        reply(&mut self.actions, conn, encoding, &welcome);
        if let Some(since) = join.since
            && !(join.epoch == Some(self.epoch) && self.replay(now, conn, encoding, since))
        {
            self.resync(conn, encoding);
        }
    }

    /// Forwards ops `since + 1 ..= durable` to `conn`, if they are all
    /// kept and fewer than a connection may leave unacknowledged; false
    /// (nothing sent) otherwise.
    fn replay(&mut self, now: Instant, conn: ConnId, encoding: Encoding, since: u64) -> bool {
        let upto = self.durable;
        if since > upto || upto - since >= u64::from(self.config.max_unacked) {
            return false;
        }
        let Some(history) = self.sessions.as_ref().and_then(|s| s.history(since, upto)) else {
            return false;
        };
        let mut frames: Vec<(u64, Frame)> = Vec::new();
        for entry in history {
            let Ok((_, op)) = commit::decode_entry::<A::Op>(&entry.bytes) else {
                return false;
            };
            let msg = ServerMsg::<&A::Op, &A>::Forward {
                seq: entry.seq,
                op: &op,
            };
            frames.push((entry.seq, encode_or_internal_error(&msg, encoding)));
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return true;
        };
        for (seq, frame) in frames {
            let retry_at = c.sent(now, seq, frame.clone());
            self.retry_due = Some(self.retry_due.map_or(retry_at, |d| d.min(retry_at)));
            self.actions.push_back(Action::Send {
                conn,
                frame,
                delivery: Delivery::Retried,
            });
        }
        true
    }

    /// Sends `conn` the whole state as of the last op applied, once that
    /// op is durable; the forwards of the ops it holds are not sent to it.
    fn resync(&mut self, conn: ConnId, encoding: Encoding) {
        let msg = ServerMsg::<&A::Op, &A>::Resync {
            seq: self.seq,
            state: &self.app,
        };
        let frame = encode_or_internal_error(&msg, encoding);
        match &mut self.sessions {
            Some(sessions) if self.seq > self.durable => sessions.resyncs.push(Resync {
                conn,
                seq: self.seq,
                frame: Some(frame),
            }),
            _ => send_once(&mut self.actions, conn, frame),
        }
    }
}
