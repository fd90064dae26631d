//! What connections send: joins, leaves, and the frames that carry ops,
//! fetches and acks, each admitted or refused against the gathering's
//! bounds (connections, rate, ops in flight) and its app.

use crate::clock::Instant;
use crate::conn::Conn;
use crate::conn::Limit;
use crate::events::{Action, Delivery, Inbound};
use crate::protocol::{self, CLOSE_FORBIDDEN, CLOSE_POLICY, ClientMsg, Encoding, Frame, ServerMsg};
use crate::{App, ConnId, SessionId, SharedMember};

use super::replies::{close_at_limit, internal_error, refuse, reply};
use super::sessions::Seen;
use super::welcome::session_member;
use super::{Accepted, Gathering, Phase, STORAGE_FAILED};

/// Encoded states smaller than this are not cached for the next fetch.
const FETCH_CACHE_MIN_BYTES: usize = 4096;

/// The state at op `seq`, encoded once per encoding asked for.
pub(super) struct Fetched {
    seq: u64,
    json: Option<Frame>,
    postcard: Option<Frame>,
}

impl<A: App> Gathering<A> {
    #[inline]
    pub(super) fn on_inbound(&mut self, now: Instant, inbound: Inbound) {
        if matches!(self.phase, Phase::Closing(_) | Phase::Dispersed(_)) {
            self.actions.push_back(Action::Bounce(inbound));
            return;
        }
        self.processed += 1;
        match inbound {
            Inbound::Join {
                conn,
                encoding,
                member,
                session,
            } => {
                self.last_activity = now;
                // An open server's member has every right, joining included.
                let admitted = member.as_ref().map_or(Ok(()), |m| self.app.admit(m));
                if let Err(refusal) = admitted {
                    refuse(
                        &mut self.actions,
                        conn,
                        encoding,
                        None,
                        refusal.code,
                        refusal.message,
                    );
                    self.actions.push_back(Action::Close {
                        conn,
                        code: CLOSE_POLICY,
                        reason: "not allowed to join",
                    });
                    return;
                }
                if self.conns.get(conn).is_none()
                    && self.conns.len() >= self.config.max_connections as usize
                {
                    close_at_limit(
                        &mut self.actions,
                        conn,
                        "full",
                        protocol::CLOSE_TRY_AGAIN,
                        "this gathering is full; try again later",
                    );
                    return;
                }
                let member = match &session {
                    Some(join) => {
                        let member = session_member(member, &join.session);
                        if self.session_taken(&join.session, &member) {
                            refuse(
                                &mut self.actions,
                                conn,
                                encoding,
                                None,
                                protocol::SESSION_TAKEN,
                                format!(
                                    "session {} belongs to another member: choose another",
                                    join.session
                                ),
                            );
                            self.actions.push_back(Action::Close {
                                conn,
                                code: CLOSE_FORBIDDEN,
                                reason: "session_taken",
                            });
                            return;
                        }
                        Some(member)
                    }
                    None => member,
                };
                self.empty_since = None;
                if self.conns.get(conn).is_none() {
                    let fresh = Conn::new(encoding, member.clone(), self.config.retry_interval);
                    self.conns.insert(conn, fresh);
                }
                if let (Some(join), Some(member)) = (session, member) {
                    self.welcome(now, conn, encoding, &member, &join);
                    self.present(now, conn, encoding, &member.id);
                }
            }
            Inbound::Leave { conn, clean } => self.drop_conn(now, conn, clean),
            Inbound::Frame {
                conn,
                frame,
                member,
                session,
            } => self.on_frame(now, conn, &frame, member, session),
        }
    }

    /// Forgets connection `conn` (gone, or closed by the gathering; `clean`
    /// if its client closed it).
    pub(super) fn drop_conn(&mut self, now: Instant, conn: ConnId, clean: bool) {
        if let Some(sessions) = &mut self.sessions
            && sessions.of(conn).is_some()
        {
            sessions.detach(conn);
            let member = self.conns.get(conn).and_then(|c| c.member.clone());
            if let Some(member) = member {
                self.absent(now, &member.id, clean);
            }
        }
        if self.conns.remove(conn).is_some() && self.conns.is_empty() {
            self.empty_since = Some(now);
        }
    }

    /// Closes `conn` at `limit` once every op it sent that was accepted is
    /// acked (at once if none waits): a client never loses the ack of an
    /// op that applied. Meanwhile it is sent no forward.
    pub(super) fn close_at(&mut self, now: Instant, conn: ConnId, limit: Limit) {
        let (counted, code, reason) = limit.close();
        let last = self
            .awaiting
            .iter()
            .rev()
            .find(|a| a.origin == conn)
            .map(|a| a.seq);
        if let (Some(c), Some(last)) = (self.conns.get_mut(conn), last) {
            self.actions.push_back(Action::Refused {
                conn,
                code: counted,
            });
            c.closing = Some(limit);
            c.closing_at = last;
            c.unacked.clear();
            c.retry_at = None;
            return;
        }
        self.drop_conn(now, conn, false);
        close_at_limit(&mut self.actions, conn, counted, code, reason);
    }

    fn on_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: &Frame,
        member: Option<SharedMember>,
        session: Option<SessionId>,
    ) {
        let encoding = frame.encoding();
        if let Some(c) = self.conns.get_mut(conn) {
            c.encoding = encoding;
        }
        let msg = match protocol::decode::<ClientMsg<A::Op, A::Presence>>(frame) {
            Ok(msg) => msg,
            Err(e) => {
                // Garbage is answered but is not activity: it must not keep a
                // gathering alive.
                refuse(
                    &mut self.actions,
                    conn,
                    encoding,
                    None,
                    "bad_frame",
                    e.to_string(),
                );
                return;
            }
        };
        if let ClientMsg::Presence { data } = msg {
            // Not activity: presence alone never keeps a gathering alive.
            let member = self.conns.get(conn).and_then(|c| c.member.clone());
            let member = member.as_ref().map(|m| m.id.as_str());
            self.set_presence(now, conn, encoding, member, data, frame);
            return;
        }
        self.last_activity = now;
        match msg {
            ClientMsg::Op { id, .. } | ClientMsg::Fetch { id } if self.broken => refuse(
                &mut self.actions,
                conn,
                encoding,
                Some(id),
                STORAGE_FAILED,
                "storage failed; this gathering is restarting from its durable state: \
                 reconnect and send it again"
                    .into(),
            ),
            // A fetch is a request too, and can cost more than an op.
            ClientMsg::Op { id, .. } | ClientMsg::Fetch { id } if !self.within_rate(now, conn) => {
                let (per_sec, burst) = (self.config.max_ops_per_sec, self.config.op_burst);
                let far_over = self
                    .conns
                    .get(conn)
                    .is_some_and(|c| u32::from(c.rate_refused) > burst.max(1));
                refuse(
                    &mut self.actions,
                    conn,
                    encoding,
                    Some(id),
                    protocol::RATE_LIMITED,
                    format!(
                        "at most {per_sec} ops and fetches a second (bursts of {burst}); this \
                         one was refused and changed nothing: send it again later"
                    ),
                );
                if far_over {
                    self.close_at(now, conn, Limit::Flood);
                }
            }
            ClientMsg::Op { id, op } => {
                // The session it joined with; its frame's if it joined
                // elsewhere (a frame sent while its gathering dispersed).
                let session = match self.sessions.as_ref().and_then(|s| s.of(conn)) {
                    Some(joined) => Some(joined.clone()),
                    None if self.conns.get(conn).is_none() => session,
                    None => None,
                };
                if let Some(s) = &session
                    && self.conns.get(conn).is_none()
                    && self.session_taken(s, &session_member(member.clone(), s))
                {
                    let message = format!("session {s} belongs to another member");
                    let code = protocol::SESSION_TAKEN;
                    refuse(&mut self.actions, conn, encoding, Some(id), code, message);
                    return;
                }
                let seen = match (&session, &self.sessions) {
                    (Some(s), Some(sessions)) => sessions.seen(s, id),
                    _ => Seen::Fresh,
                };
                match seen {
                    Seen::Applied(seq) => self.applied_before(conn, encoding, id, seq),
                    Seen::Stale => refuse(
                        &mut self.actions,
                        conn,
                        encoding,
                        Some(id),
                        protocol::STALE_OP,
                        format!(
                            "op {id} is older than the ops this session's record keeps, and \
                             below the highest id applied from it: it is not applied again"
                        ),
                    ),
                    Seen::Fresh => match self.admit(conn) {
                        Err(message) => refuse(
                            &mut self.actions,
                            conn,
                            encoding,
                            Some(id),
                            "too_many_in_flight",
                            message,
                        ),
                        Ok(()) => self.apply(conn, encoding, id, op, member, session),
                    },
                }
            }
            ClientMsg::Fetch { id } => {
                let frame = self
                    .state_reply(id, encoding)
                    .unwrap_or_else(|e| internal_error(&e, encoding));
                self.actions.push_back(Action::Send {
                    conn,
                    frame,
                    delivery: Delivery::Once,
                });
            }
            ClientMsg::Ack { seq } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.ack(seq, self.config.retry_interval);
                }
            }
            ClientMsg::Presence { .. } => {}
        }
    }

    /// The `state` reply to fetch `id`: built around the state's encoding
    /// kept from an earlier fetch of this seq, or else encoded whole, a
    /// large state's encoding then kept for the fetches after it.
    fn state_reply(&mut self, id: u64, encoding: Encoding) -> Result<Frame, protocol::EncodeError> {
        let seq = self.seq;
        let kept = self
            .fetched
            .as_ref()
            .filter(|f| f.seq == seq)
            .and_then(|f| match encoding {
                Encoding::Json => f.json.as_ref(),
                Encoding::Postcard => f.postcard.as_ref(),
            });
        if let Some(state) = kept {
            return protocol::state_frame(id, seq, state);
        }
        let msg = ServerMsg::<&A::Op, &A>::State {
            id,
            seq,
            state: &self.app,
        };
        let whole = protocol::encode(&msg, encoding)?;
        // A small state costs less to encode again than to keep: an idle
        // gathering that was fetched once keeps nothing.
        if whole.len() >= FETCH_CACHE_MIN_BYTES
            && let Some(state) = protocol::state_of(&whole, id, seq)
        {
            let fetched = match &mut self.fetched {
                Some(f) if f.seq == seq => f,
                slot => slot.insert(Box::new(Fetched {
                    seq,
                    json: None,
                    postcard: None,
                })),
            };
            match encoding {
                Encoding::Json => fetched.json = Some(state),
                Encoding::Postcard => fetched.postcard = Some(state),
            }
        }
        Ok(whole)
    }

    /// Who `conn` acts as: the member it joined as (a frame's own can only
    /// repeat it), or its frame's if it joined elsewhere; made once, at
    /// its first op, for an open server's member.
    fn member(&mut self, conn: ConnId, sent: Option<SharedMember>) -> SharedMember {
        let open = || std::sync::Arc::new(crate::Member::open(conn));
        match self.conns.get_mut(conn) {
            Some(c) => c
                .member
                .get_or_insert_with(|| sent.unwrap_or_else(open))
                .clone(),
            None => sent.unwrap_or_else(open),
        }
    }

    /// Whether `conn` may send an op at `now` under the rate limit (always,
    /// without one); takes its token if so.
    fn within_rate(&mut self, now: Instant, conn: ConnId) -> bool {
        let (per_sec, burst) = (self.config.max_ops_per_sec, self.config.op_burst);
        if per_sec == 0 {
            return true;
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return true;
        };
        let ok = c.rate.take(now, per_sec, burst);
        c.rate_refused = if ok {
            0
        } else {
            c.rate_refused.saturating_add(1)
        };
        ok
    }

    /// Whether `conn` may have one more op waiting for its commit; if not,
    /// the message that tells the client the bound.
    fn admit(&self, conn: ConnId) -> Result<(), String> {
        let in_flight = self.conns.get(conn).map_or(0, |c| c.in_flight);
        if in_flight < self.config.max_in_flight {
            return Ok(());
        }
        Err(format!(
            "this connection has {in_flight} ops waiting for their ack, the most allowed; \
             send more once acks arrive"
        ))
    }

    /// Answers op `id`, which its session already applied as op `seq`:
    /// acked with that seq, at once if it is durable, else once it is.
    fn applied_before(&mut self, conn: ConnId, encoding: Encoding, id: u64, seq: u64) {
        if seq <= self.durable {
            reply(
                &mut self.actions,
                conn,
                encoding,
                &ServerMsg::<(), ()>::Ack { id, seq },
            );
        } else if let Some(sessions) = &mut self.sessions {
            sessions.echoes.push((seq, conn, id));
        }
    }

    /// Applies an op from `conn`: accepted, it waits for its commit;
    /// refused, the client hears why at once.
    fn apply(
        &mut self,
        conn: ConnId,
        encoding: Encoding,
        id: u64,
        op: A::Op,
        member: Option<SharedMember>,
        session: Option<SessionId>,
    ) {
        let by = match (&session, member) {
            (Some(s), member) if self.conns.get(conn).is_none() => session_member(member, s),
            (_, member) => self.member(conn, member),
        };
        match self.app.apply(&by, &op) {
            Ok(()) => {
                self.seq += 1;
                self.fetched = None;
                if let Some(c) = self.conns.get_mut(conn) {
                    c.in_flight += 1;
                }
                if let Some(s) = &session {
                    let max = self.config.max_sessions;
                    let sessions = self.sessions.get_or_insert_default();
                    sessions.applied(s, &by.id, id, self.seq, max);
                }
                self.awaiting.push_back(Accepted {
                    seq: self.seq,
                    origin: conn,
                    by,
                    id,
                    op,
                    session,
                });
            }
            Err(rejection) => refuse(
                &mut self.actions,
                conn,
                encoding,
                Some(id),
                rejection.code,
                rejection.message,
            ),
        }
    }
}
