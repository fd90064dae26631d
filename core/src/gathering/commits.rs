//! What storage answers: the commit of every op not yet handed to the
//! host, and once it is durable, the acks to the ops' senders and their
//! forwards to everyone else (or, if it failed, the refusals).

use crate::clock::{Duration, Instant};
use crate::commit::{self, Commit, LogEntry};
use crate::conn::Limit;
use crate::events::{Action, Delivery};
use crate::protocol::{DisperseReason, Encoding, Frame, ServerMsg};
use crate::{App, ConnId};

use super::replies::{encode_or_internal_error, refuse, reply, send_once};
use super::{Accepted, Gathering, NOT_DURABLE, Phase, add, saturate};

impl<A: App> Gathering<A> {
    /// The commit of every op not handed to the host yet: their log
    /// entries, or a snapshot once the log since the last one passes its
    /// bound, or when closing (a successor then loads without replaying).
    #[inline]
    pub(super) fn commit(&mut self) -> Result<Commit, postcard::Error> {
        // What awaits is what is not durable (it is released, and
        // forgotten, as soon as it is); the ops of outstanding commits
        // come first.
        let fresh = self.awaiting.iter().skip_while(|a| a.seq <= self.submitted);
        // Accepted ops are numbered one after another: this many are fresh.
        let mut log = Vec::with_capacity(usize::try_from(self.seq - self.submitted).unwrap_or(0));
        let mut bytes = 0u64;
        for a in fresh {
            let entry = match &a.session {
                Some(session) => commit::encode_session_entry(&a.by, &a.op, session, a.id)?,
                None => commit::encode_entry(&a.by, &a.op)?,
            };
            bytes += entry.len() as u64;
            log.push(LogEntry {
                seq: a.seq,
                bytes: entry,
            });
        }
        if let Some(sessions) = &mut self.sessions {
            let (ops, bytes) = (self.config.resume_ops, self.config.resume_bytes);
            for entry in &log {
                sessions.logged(entry.clone(), ops, bytes);
            }
        }
        let (ops, bytes) = add(
            self.logged,
            log.len(),
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
        // A bound is passed, and the log outweighs the last snapshot (or the
        // gathering closes): a state that grows makes snapshots rarer, so
        // each logged byte pays for at most one byte of snapshot.
        // A session's client may have been told the epoch: the first
        // commit after stores it, in a snapshot.
        let unsaved_epoch = self.sessions.as_ref().is_some_and(|s| !s.epoch_saved);
        let compact = ((ops >= self.config.snapshot_ops || bytes >= self.config.snapshot_bytes)
            && bytes >= self.snapshot_len)
            || matches!(self.phase, Phase::Closing(_))
            || unsaved_epoch;
        let commit = if compact {
            let mut snapshot = postcard::to_allocvec(&self.app)?;
            if let Some(sessions) = &mut self.sessions {
                snapshot.extend(sessions.save(self.epoch)?);
                sessions.epoch_saved = true;
            }
            self.snapshot_len = saturate(snapshot.len());
            Commit {
                seq: self.seq,
                log: Vec::new(),
                snapshot: Some(snapshot),
            }
        } else {
            Commit {
                seq: self.seq,
                log,
                snapshot: None,
            }
        };
        Ok(commit)
    }

    pub(super) fn on_persist_failed(&mut self, reason: DisperseReason) {
        let echoes = self
            .sessions
            .as_mut()
            .map(|s| std::mem::take(&mut s.echoes))
            .unwrap_or_default();
        for (_, conn, id) in echoes {
            let encoding = self.encoding_of(conn);
            refuse(
                &mut self.actions,
                conn,
                encoding,
                Some(id),
                NOT_DURABLE,
                "storage failed while this op was being made durable: it is not \
                 acknowledged and may be lost; reconnect and send it again"
                    .into(),
            );
        }
        for a in std::mem::take(&mut self.awaiting) {
            let encoding = self.settled(a.origin);
            refuse(
                &mut self.actions,
                a.origin,
                encoding,
                Some(a.id),
                NOT_DURABLE,
                "storage failed while this op was being made durable: it is not \
                 acknowledged and may be lost; reconnect, fetch, and send it again \
                 if it is missing"
                    .into(),
            );
            self.close_if_settled(a.origin, a.seq);
        }
        // Nothing after the durable state is persisted or counted again
        // (a host that overlaps commits writes none after a failed one).
        self.seq = self.durable;
        self.submitted = self.durable;
        self.fetched = None;
        self.broken = true;
        self.leaving = Some(reason);
        match self.phase {
            Phase::Live => self.ask(reason, Duration::ZERO),
            // The pending verdict decides; a refusal asks again. Fenced,
            // the clients are told to go where the gathering is now.
            Phase::Asking(_) => {
                if reason == DisperseReason::Moved {
                    self.phase = Phase::Asking(reason);
                }
            }
            // The final commit failed: close with what the store holds.
            Phase::Closing(_) => {
                if reason == DisperseReason::Moved {
                    self.phase = Phase::Closing(reason);
                }
                self.try_finish();
            }
            Phase::Dispersed(_) => {}
        }
    }

    #[inline]
    pub(super) fn on_persisted(&mut self, now: Instant, seq: u64) {
        self.durable = self.durable.max(seq.min(self.submitted));
        self.release(now);
        self.try_finish();
    }

    /// The encoding `conn` speaks (JSON if it is gone).
    fn encoding_of(&self, conn: ConnId) -> Encoding {
        self.conns
            .get(conn)
            .map_or_else(Encoding::default, |c| c.encoding)
    }

    /// One op of `origin` no longer waits for its commit (acked or
    /// refused): its count comes down. Returns the encoding to answer in.
    #[inline]
    pub(super) fn settled(&mut self, origin: ConnId) -> Encoding {
        self.conns
            .get_mut(origin)
            .map_or_else(Encoding::default, |c| {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.encoding
            })
    }

    /// Acknowledges and forwards every op that is now durable.
    #[inline]
    pub(super) fn release(&mut self, now: Instant) {
        if let Some(sessions) = &mut self.sessions {
            // A resync waiting for its ops goes before any later forward.
            for r in &mut sessions.resyncs {
                if r.seq <= self.durable
                    && let Some(frame) = r.frame.take()
                {
                    send_once(&mut self.actions, r.conn, frame);
                }
            }
        }
        while self.awaiting.front().is_some_and(|a| a.seq <= self.durable) {
            let Some(accepted) = self.awaiting.pop_front() else {
                break;
            };
            let origin_encoding = self.settled(accepted.origin);
            let ack = ServerMsg::<&A::Op, &A>::Ack {
                id: accepted.id,
                seq: accepted.seq,
            };
            reply(&mut self.actions, accepted.origin, origin_encoding, &ack);
            self.close_if_settled(accepted.origin, accepted.seq);
            if matches!(self.phase, Phase::Live | Phase::Asking(_)) {
                self.forward(now, &accepted);
            }
        }
        if let Some(sessions) = &mut self.sessions {
            if !sessions.echoes.is_empty() {
                let durable = self.durable;
                let (due, later) = std::mem::take(&mut sessions.echoes)
                    .into_iter()
                    .partition(|&(seq, _, _)| seq <= durable);
                sessions.echoes = later;
                for (seq, conn, id) in due {
                    let encoding = self.encoding_of(conn);
                    reply(
                        &mut self.actions,
                        conn,
                        encoding,
                        &ServerMsg::<(), ()>::Ack { id, seq },
                    );
                }
            }
        }
    }

    /// Closes `origin` if it was closed at a limit and op `seq`, just
    /// answered, was the last it had sent then.
    #[inline]
    fn close_if_settled(&mut self, origin: ConnId, seq: u64) {
        let Some(c) = self.conns.get(origin) else {
            return;
        };
        if let Some(limit) = c.closing
            && c.closing_at == seq
        {
            let (_, code, reason) = limit.close();
            let now = self.now;
            self.drop_conn(now, origin, false);
            self.actions.push_back(Action::Close {
                conn: origin,
                code,
                reason,
            });
        }
    }

    pub(super) fn forward(&mut self, now: Instant, accepted: &Accepted<A::Op>) {
        let msg = ServerMsg::<&A::Op, &A>::Forward {
            seq: accepted.seq,
            op: &accepted.op,
        };
        // Encoded at most once per encoding, shared by every recipient.
        let mut frames: [Option<Frame>; 2] = [None, None];
        let mut lagging: Vec<ConnId> = Vec::new();
        let floors = self
            .sessions
            .as_mut()
            .map(|s| {
                s.resyncs.retain(|r| r.seq >= accepted.seq);
                &s.resyncs
            })
            .filter(|f| !f.is_empty());
        for (conn, c) in self.conns.iter_mut() {
            if conn == accepted.origin || c.closing.is_some() {
                continue;
            }
            // Resynced with a state that holds this op.
            if floors.is_some_and(|f| f.iter().any(|r| r.conn == conn)) {
                continue;
            }
            if c.unacked.len() >= self.config.max_unacked as usize {
                lagging.push(conn);
                continue;
            }
            let slot = &mut frames[c.encoding as usize];
            let frame = slot
                .get_or_insert_with(|| encode_or_internal_error(&msg, c.encoding))
                .clone();
            let retry_at = c.sent(now, accepted.seq, frame.clone());
            self.retry_due = Some(self.retry_due.map_or(retry_at, |d| d.min(retry_at)));
            self.actions.push_back(Action::Send {
                conn,
                frame,
                delivery: Delivery::Retried,
            });
        }
        for conn in lagging {
            self.close_at(now, conn, Limit::Lagging);
        }
        if self.conns.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(now);
        }
    }
}
