//! Who is here: the members with a session's connection open (or lost
//! without a close, for the grace), each with the presence it last set.
//! Ephemeral: never persisted, never logged, never retried. A session's
//! connection gets the whole map after its welcome, then a diff of every
//! change, at most one per [`PRESENCE_INTERVAL`], the latest data winning.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::Instant;
use crate::config::{PRESENCE_INTERVAL, PRESENCE_PER_SEC};
use crate::conn::Bucket;
use crate::protocol::{self, Encoding, Frame, ServerMsg};
use crate::{App, ConnId};

use super::Gathering;
use super::replies::{encode_or_internal_error, refuse, send_once};

/// The presence of a gathering's session members.
#[derive(Debug)]
pub(super) struct Presence<P> {
    members: BTreeMap<String, Present<P>>,
    /// Members whose arrival or data is not sent yet, and who left.
    joined: BTreeSet<String>,
    left: BTreeSet<String>,
    /// When the next diff goes out, if one is due.
    flush_at: Option<Instant>,
    /// When the last went out.
    flushed: Option<Instant>,
    /// The earliest `gone_at` of any member: kept, not searched for, since
    /// the gathering asks for its deadline after every message.
    first_gone: Option<Instant>,
}

impl<P> Default for Presence<P> {
    fn default() -> Self {
        Presence {
            members: BTreeMap::new(),
            joined: BTreeSet::new(),
            left: BTreeSet::new(),
            flush_at: None,
            flushed: None,
            first_gone: None,
        }
    }
}

/// One member present.
#[derive(Debug)]
struct Present<P> {
    data: Option<P>,
    /// Its session connections open.
    conns: u32,
    /// Its last connection was lost at no close: it leaves then.
    gone_at: Option<Instant>,
    /// Its updates' rate.
    rate: Bucket,
}

impl<P> Presence<P> {
    /// When something is next due: a diff, or a lost member's leave.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.flush_at, self.first_gone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A change to send: the next diff goes out at once, or once the
    /// interval since the last has passed.
    fn changed(&mut self, now: Instant) {
        if self.flush_at.is_none() {
            let earliest = self.flushed.map_or(now, |at| at + PRESENCE_INTERVAL);
            self.flush_at = Some(earliest.max(now));
        }
    }

    fn arrived(&mut self, now: Instant, member: &str) {
        self.left.remove(member);
        self.joined.insert(member.to_owned());
        self.changed(now);
    }

    fn departed(&mut self, now: Instant, member: &str) {
        self.members.remove(member);
        self.joined.remove(member);
        self.left.insert(member.to_owned());
        self.changed(now);
    }

    /// Recounts `first_gone`, after a member's `gone_at` was set or
    /// cleared.
    fn regone(&mut self) {
        self.first_gone = self.members.values().filter_map(|p| p.gone_at).min();
    }

    fn everyone(&self) -> BTreeMap<String, Option<&P>> {
        self.members
            .iter()
            .map(|(m, p)| (m.clone(), p.data.as_ref()))
            .collect()
    }
}

impl<A: App> Gathering<A> {
    /// Session connection `conn` of `member` opened: it gets everyone
    /// present; the others hear of `member` unless it was present already
    /// (another connection, or a rejoin within the grace).
    pub(super) fn present(&mut self, now: Instant, conn: ConnId, encoding: Encoding, member: &str) {
        let Some(sessions) = &mut self.sessions else {
            return;
        };
        let presence = &mut sessions.presence;
        let p = presence
            .members
            .entry(member.to_owned())
            .or_insert_with(|| Present {
                data: None,
                conns: 0,
                gone_at: None,
                rate: Bucket::default(),
            });
        let was = p.conns > 0 || p.gone_at.is_some();
        p.conns += 1;
        if p.gone_at.take().is_some() {
            presence.regone();
        }
        if !was {
            presence.arrived(now, member);
        }
        let msg = ServerMsg::<(), (), &A::Presence>::Presence {
            members: presence.everyone(),
        };
        send_once(
            &mut self.actions,
            conn,
            encode_or_internal_error(&msg, encoding),
        );
        self.flush_presence(now);
    }

    /// Session connection `conn` of `member` is gone: cleanly (a close
    /// frame from its client), `member` leaves once it has no other; else
    /// it stays for the grace.
    pub(super) fn absent(&mut self, now: Instant, member: &str, clean: bool) {
        let grace = self.config.presence_grace;
        let Some(sessions) = &mut self.sessions else {
            return;
        };
        let presence = &mut sessions.presence;
        let Some(p) = presence.members.get_mut(member) else {
            return;
        };
        p.conns = p.conns.saturating_sub(1);
        if p.conns > 0 {
            return;
        }
        if clean {
            presence.departed(now, member);
            self.flush_presence(now);
        } else {
            p.gone_at = Some(now + grace);
            presence.regone();
        }
    }

    /// `conn` (of `member`) set its presence to what `frame` holds.
    pub(super) fn set_presence(
        &mut self,
        now: Instant,
        conn: ConnId,
        encoding: Encoding,
        member: Option<&str>,
        data: A::Presence,
        frame: &Frame,
    ) {
        let present = member.and_then(|m| {
            let s = self.sessions.as_mut()?;
            s.of(conn)?;
            Some((m, s))
        });
        let Some((member, sessions)) = present else {
            let message = "presence is for a connection that joined with a session".into();
            refuse(
                &mut self.actions,
                conn,
                encoding,
                None,
                protocol::NO_SESSION,
                message,
            );
            return;
        };
        let max = self.config.max_presence_bytes;
        // The frame less the envelope: what the data took as sent.
        if frame.len() > max as usize + ENVELOPE_BYTES {
            let message = format!("a presence takes at most {max} bytes");
            let code = protocol::PRESENCE_TOO_LARGE;
            refuse(&mut self.actions, conn, encoding, None, code, message);
            return;
        }
        let presence = &mut sessions.presence;
        let Some(p) = presence.members.get_mut(member) else {
            return;
        };
        if !p.rate.take(now, PRESENCE_PER_SEC, PRESENCE_PER_SEC) {
            let message = format!("at most {PRESENCE_PER_SEC} presence updates a second");
            refuse(
                &mut self.actions,
                conn,
                encoding,
                None,
                protocol::RATE_LIMITED,
                message,
            );
            return;
        }
        p.data = Some(data);
        presence.arrived(now, member);
        self.flush_presence(now);
    }

    /// Sends the diff if it is due, and lets go of members lost for the
    /// whole grace.
    pub(super) fn flush_presence(&mut self, now: Instant) {
        let Some(sessions) = &mut self.sessions else {
            return;
        };
        let (presence, session_conns) = sessions.presence_and_conns();
        if presence.first_gone.is_some_and(|at| at <= now) {
            let lost: Vec<String> = presence
                .members
                .iter()
                .filter(|(_, p)| p.gone_at.is_some_and(|at| at <= now))
                .map(|(m, _)| m.clone())
                .collect();
            for member in lost {
                presence.departed(now, &member);
            }
            presence.regone();
        }
        if presence.flush_at.is_none_or(|at| at > now) {
            return;
        }
        presence.flush_at = None;
        presence.flushed = Some(now);
        let joins: BTreeMap<String, Option<&A::Presence>> = std::mem::take(&mut presence.joined)
            .into_iter()
            .filter_map(|m| {
                let data = presence.members.get(&m)?.data.as_ref();
                Some((m, data))
            })
            .collect();
        let leaves: Vec<String> = std::mem::take(&mut presence.left).into_iter().collect();
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let msg = ServerMsg::<(), (), &A::Presence>::PresenceDiff { joins, leaves };
        let mut frames: [Option<Frame>; 2] = [None, None];
        for conn in session_conns.ids() {
            let Some(c) = self.conns.get(conn).filter(|c| c.closing.is_none()) else {
                continue;
            };
            let frame = frames[c.encoding as usize]
                .get_or_insert_with(|| encode_or_internal_error(&msg, c.encoding))
                .clone();
            send_once(&mut self.actions, conn, frame);
        }
    }
}

/// Bytes of a presence message around its data, at most (JSON's
/// `{"type":"presence","data":` and `}`).
const ENVELOPE_BYTES: usize = 27;
