//! The gathering: one live room's state, its connections, and when it ends.
//!
//! The machine is split by what it answers: [`requests`] handles what
//! connections send, [`commits`] what storage answers (acks and forwards
//! of durable ops), [`replies`] encodes what goes back; this module holds
//! the state, its life (idle, empty, dispersal) and its deadlines.

mod commits;
mod presence;
mod replies;
mod requests;
mod sessions;
mod welcome;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::clock::{Duration, Instant};
use crate::commit::{self, Loaded};
use crate::config::Config;
use crate::conn::{Conn, ConnMap};
use crate::events::{Action, Deadline, Delivery, Event, Verdict, Why};
use crate::protocol::{DisperseReason, Frame, ServerMsg};
use crate::{App, ConnId, GatheringId, SessionId, SharedMember};

use replies::encode_or_internal_error;
use requests::Fetched;
use sessions::Sessions;

/// Epochs are below 2^53: exact as a JavaScript number.
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// Error code of an op whose commit failed: it was not applied.
pub const NOT_DURABLE: &str = "not_durable";
/// Error code of a request to a gathering whose storage failed.
pub const STORAGE_FAILED: &str = "storage_failed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serving clients.
    Live,
    /// Asked the hall to disperse; still serving until the verdict.
    Asking(DisperseReason),
    /// Dispersal decided: writing the final snapshot, then closing.
    Closing(DisperseReason),
    /// Done; the host drops it.
    Dispersed(DisperseReason),
}

/// The state could not be restored from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreError {
    /// Which gathering.
    pub id: GatheringId,
    /// What was wrong with the stored bytes.
    pub message: String,
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stored state of gathering {} is unreadable: {}",
            self.id, self.message
        )
    }
}

impl std::error::Error for RestoreError {}

/// An op accepted and applied, waiting for its commit to be durable before
/// it is acknowledged and forwarded.
#[derive(Debug)]
struct Accepted<O> {
    seq: u64,
    origin: ConnId,
    by: SharedMember,
    id: u64,
    op: O,
    /// The session it came with, logged with it.
    session: Option<SessionId>,
}

/// `logged` with `ops` more ops of `bytes` bytes, saturating.
fn add(logged: (u32, u32), ops: usize, bytes: usize) -> (u32, u32) {
    (
        logged.0.saturating_add(saturate(ops)),
        logged.1.saturating_add(saturate(bytes)),
    )
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One live room: application state, the connections following it, and the
/// decision of when it ends.
///
/// # Driver contract
/// A host owns the clock, the sockets and the storage, and runs this loop:
/// 1. feed every input with [`Gathering::handle`], stamped with the current time;
/// 2. drain [`Gathering::poll_action`] until it returns `None`, carrying out each action;
/// 3. read [`Gathering::next_deadline`] and make sure **one** timer is armed
///    no later than it. Re-arm only when the timer fires (early or not) or an
///    earlier deadline appears; a later deadline needs no re-arm, because a
///    tick that comes early changes nothing but the deadline.
///
/// Per processed message the stale-detection bookkeeping is one timestamp
/// write: no timer, no queued message, no allocation.
///
/// **A gathering never disperses while a message it has been sent is
/// unprocessed**: it asks the hall ([`Action::Disperse`]) with the count of
/// messages it processed, and closes only on [`Verdict::Granted`], after its
/// final state is durable. **An op is acknowledged and forwarded only once
/// the commit that holds it is durable.**
pub struct Gathering<A: App> {
    id: GatheringId,
    /// Shared by every gathering of a host: one pointer each.
    config: Arc<Config>,
    app: A,
    phase: Phase,
    /// Number of the last op applied.
    seq: u64,
    /// Number of the last op known durable.
    durable: u64,
    /// Number of the last op handed to the host in a commit: commits are
    /// outstanding while it is past `durable`.
    submitted: u64,
    /// Ops and bytes logged since the last snapshot, counted when handed
    /// to the host (a failed write leaves the gathering broken, so counting
    /// early changes nothing); `u32`, saturating, to keep idle gatherings
    /// small.
    logged: (u32, u32),
    /// Bytes of the last snapshot written: the log must hold as many
    /// before the next, so that snapshotting costs O(1) per logged byte
    /// however large the state grows.
    snapshot_len: u32,
    /// After a commit that could not be encoded, when to try again.
    flush_at: Option<Instant>,
    /// A commit failed: the state in memory holds ops the store does not,
    /// so nothing more is applied, persisted or shown; the gathering
    /// disperses and a successor loads what is durable.
    broken: bool,
    /// Why it must disperse once the hall agrees (a failed or fenced
    /// commit, a handoff): a refusal only means traffic was on its way, so
    /// it asks again after each message.
    leaving: Option<DisperseReason>,
    /// Time of the last client activity: the whole idle bookkeeping.
    last_activity: Instant,
    /// Since when the gathering has had no connection.
    empty_since: Option<Instant>,
    /// Inbound messages handled, for the dispersal handshake.
    processed: u64,
    /// The latest time seen in any input.
    now: Instant,
    conns: ConnMap<Conn>,
    /// A lower bound of every connection's `retry_at`: kept in O(1) per
    /// forward, made exact again when it fires.
    retry_due: Option<Instant>,
    awaiting: VecDeque<Accepted<A::Op>>,
    actions: VecDeque<Action>,
    /// The state as last fetched, encoded, until the next op: a crowd that
    /// fetches a large state costs one encoding of it per encoding, not one
    /// per fetch. Boxed, so that a gathering nobody fetches pays a pointer.
    fetched: Option<Box<Fetched>>,
    /// Its history's identity, below 2^53; 0 until one is stored or
    /// offered ([`Gathering::offer_epoch`]).
    epoch: u64,
    /// Its sessions, from the first join with one (or a snapshot holding
    /// some) on. Boxed: a gathering without sessions pays a pointer.
    sessions: Option<Box<Sessions<A::Presence>>>,
}

impl<A: App> fmt::Debug for Gathering<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gathering")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("seq", &self.seq)
            .field("durable", &self.durable)
            .field("connections", &self.conns.len())
            .field("last_activity", &self.last_activity)
            .finish_non_exhaustive()
    }
}

impl<A: App> Gathering<A> {
    /// A gathering that was never persisted, spawned at `now`.
    pub fn new(id: GatheringId, config: impl Into<Arc<Config>>, now: Instant) -> Self {
        Self::with_state(id, config.into(), now, A::default(), 0)
    }

    /// A gathering loaded from what its commits ([`Action::Persist`]) left:
    /// the latest snapshot, then every log entry after it applied again in
    /// order (which the [`App`] contract makes give the same state).
    pub fn restore(
        id: GatheringId,
        config: impl Into<Arc<Config>>,
        now: Instant,
        loaded: &Loaded,
    ) -> Result<Self, RestoreError> {
        let fail = |message: String| RestoreError {
            id: id.clone(),
            message,
        };
        let (mut app, mut seq, mut sessions, epoch) = match &loaded.snapshot {
            Some(snapshot) => match postcard::take_from_bytes::<A>(&snapshot.bytes) {
                Ok((app, [])) => (app, snapshot.seq, None, 0),
                // A gathering with sessions saves them after the state.
                Ok((app, rest)) => {
                    let (sessions, epoch) = Sessions::load(rest).map_err(|e| {
                        fail(format!(
                            "sessions in the snapshot of op {}: {e}",
                            snapshot.seq
                        ))
                    })?;
                    (app, snapshot.seq, Some(Box::new(sessions)), epoch)
                }
                Err(e) => return Err(fail(format!("snapshot of op {}: {e}", snapshot.seq))),
            },
            None => (A::default(), 0, None, 0),
        };
        let mut logged = (0u32, 0u32);
        for entry in &loaded.log {
            // Entries a snapshot covers are deleted with it; one left over
            // (a store that deletes lazily) changes nothing.
            if entry.seq <= seq {
                continue;
            }
            if entry.seq != seq + 1 {
                return Err(fail(format!(
                    "the log jumps from op {seq} to op {}",
                    entry.seq
                )));
            }
            let (by, op, session) = commit::decode_session_entry::<A::Op>(&entry.bytes)
                .map_err(|e| fail(format!("log entry of op {}: {e}", entry.seq)))?;
            app.apply(&by, &op)
                .map_err(|r| fail(format!("log entry of op {} does not apply: {r}", entry.seq)))?;
            seq = entry.seq;
            logged = add(logged, 1, entry.bytes.len());
            if let Some((name, op_id)) = session {
                let name = SessionId::parse(&name)
                    .map_err(|e| fail(format!("log entry of op {}: {e}", entry.seq)))?;
                let sessions = sessions.get_or_insert_default();
                sessions.applied(&name, &by.id, op_id, entry.seq, u32::MAX);
            }
        }
        let config: Arc<Config> = config.into();
        if let Some(sessions) = &mut sessions {
            // What the log holds after the snapshot is what a resume can
            // be served from, restarts and all.
            let covered = loaded.snapshot.as_ref().map_or(0, |s| s.seq);
            for entry in loaded.log.iter().filter(|e| e.seq > covered) {
                sessions.logged(entry.clone(), config.resume_ops, config.resume_bytes);
            }
        }
        let mut gathering = Self::with_state(id, config, now, app, seq);
        gathering.sessions = sessions;
        gathering.epoch = epoch;
        gathering.logged = logged;
        gathering.snapshot_len = loaded
            .snapshot
            .as_ref()
            .map_or(0, |s| saturate(s.bytes.len()));
        Ok(gathering)
    }

    fn with_state(id: GatheringId, config: Arc<Config>, now: Instant, app: A, seq: u64) -> Self {
        Gathering {
            id,
            config,
            app,
            phase: Phase::Live,
            seq,
            durable: seq,
            submitted: seq,
            logged: (0, 0),
            snapshot_len: 0,
            flush_at: None,
            broken: false,
            leaving: None,
            // Spawning is activity: something was routed here to cause it.
            last_activity: now,
            empty_since: Some(now),
            processed: 0,
            now,
            conns: ConnMap::default(),
            retry_due: None,
            awaiting: VecDeque::new(),
            actions: VecDeque::new(),
            fetched: None,
            epoch: 0,
            sessions: None,
        }
    }

    /// Gives the gathering `fresh` (masked below 2^53, never 0) as its
    /// epoch if its store held none: a value the host never handed out
    /// before for this store (wall-clock microseconds, say), so that a
    /// gathering created anew never shows an old epoch. Ignored once it
    /// has one.
    pub fn offer_epoch(&mut self, fresh: u64) {
        if self.epoch == 0 {
            self.epoch = (fresh & EPOCH_MASK).max(1);
        }
    }

    /// Its history's identity (see [`Gathering::offer_epoch`]); 0 if it
    /// has none yet.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sessions it remembers.
    pub fn sessions(&self) -> usize {
        self.sessions.as_ref().map_or(0, |s| s.len())
    }

    /// The gathering's id.
    pub fn id(&self) -> &GatheringId {
        &self.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The application state (including ops not yet durable).
    pub fn app(&self) -> &A {
        &self.app
    }

    /// Where it is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Number of the last op applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of the last op known to be durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// Time of the last client activity.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Inbound messages processed so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Number of connections joined.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// When it would disperse for idleness if nothing else happens.
    pub fn idle_deadline(&self) -> Instant {
        self.last_activity + self.config.idle_timeout
    }

    /// Feeds one input. Drain [`Gathering::poll_action`] afterwards.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Message(now, inbound) => {
                self.now = self.now.max(now);
                self.on_inbound(now, inbound);
                // A refusal means traffic was still on its way; with it
                // handled, ask again (or at the next tick: see `Why::Leave`).
                if let Some(reason) = self.leaving
                    && self.phase == Phase::Live
                {
                    self.ask(reason, Duration::ZERO);
                }
            }
            Event::Tick(now) => {
                self.now = self.now.max(now);
                self.on_tick(now);
            }
            Event::Persisted(now, seq) => {
                self.now = self.now.max(now);
                self.on_persisted(now, seq);
            }
            Event::PersistFailed(now) => {
                self.now = self.now.max(now);
                self.on_persist_failed(DisperseReason::StorageFailed);
            }
            Event::Fenced(now) => {
                self.now = self.now.max(now);
                self.on_persist_failed(DisperseReason::Moved);
            }
            Event::Verdict(now, verdict) => {
                self.now = self.now.max(now);
                self.on_verdict(verdict);
            }
            Event::Shutdown(now) => {
                self.now = self.now.max(now);
                if matches!(self.phase, Phase::Live | Phase::Asking(_)) {
                    self.start_closing(DisperseReason::Shutdown);
                }
            }
            Event::Evict(now) => {
                self.now = self.now.max(now);
                if self.phase == Phase::Live {
                    self.ask(DisperseReason::Evicted, Duration::ZERO);
                }
            }
            Event::Handoff(now) => {
                self.now = self.now.max(now);
                // Asked of the hall as any dispersal, so that joins on
                // their way reach a successor (on another node, as the
                // host routes them), never this one after it left.
                self.leaving.get_or_insert(DisperseReason::Moved);
                if self.phase == Phase::Live {
                    self.ask(DisperseReason::Moved, Duration::ZERO);
                }
            }
        }
    }

    /// The next output, or `None` when there is nothing (more) to do now.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        // Commits are made lazily, once the host has drained everything
        // else: ops handled before the host asks are batched into one write.
        let wants_persist = self.seq > self.submitted
            && (self.submitted == self.durable || self.config.overlap_commits)
            && self.flush_at.is_none()
            && !matches!(self.phase, Phase::Dispersed(_));
        if !wants_persist {
            return None;
        }
        match self.commit() {
            Ok(commit) => {
                self.logged = match commit.snapshot {
                    Some(_) => (0, 0),
                    None => add(self.logged, commit.log.len(), commit.bytes()),
                };
                self.submitted = commit.seq;
                Some(Action::Persist(commit))
            }
            // Not expected for well-formed state; retry later like a failed write.
            Err(_) => {
                self.flush_at = Some(self.now + self.config.retry_interval);
                None
            }
        }
    }

    /// The soonest instant at which the gathering must be ticked, with why;
    /// `None` when only an input can wake it.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Deadline> {
        // Straight-line in the common case (live, nothing pending): a host
        // may call this after every message.
        let earliest = |best: Deadline, at: Option<Instant>, why: Why| match at {
            Some(at) if at < best.at => Deadline { at, why },
            _ => best,
        };
        let pending = |best: Deadline| {
            let best = earliest(best, self.retry_due, Why::Retry);
            let best = earliest(best, self.flush_at, Why::Flush);
            let presence = self.sessions.as_ref().and_then(|s| s.presence.deadline());
            earliest(best, presence, Why::Presence)
        };
        match self.phase {
            // Refused while it must leave: at once, after the mail waiting.
            // (Never later than the idle duty, which is as due.)
            Phase::Live if self.leaving.is_some() => Some(Deadline {
                at: self.now.min(self.idle_deadline()),
                why: Why::Leave,
            }),
            Phase::Live => {
                let idle = Deadline {
                    at: self.idle_deadline(),
                    why: Why::Idle,
                };
                let empty = match (self.config.empty_grace, self.empty_since) {
                    (Some(grace), Some(since)) => Some(since + grace),
                    _ => None,
                };
                Some(pending(earliest(idle, empty, Why::Empty)))
            }
            Phase::Asking(_) => {
                let never = Deadline {
                    at: Instant::from_nanos(u64::MAX),
                    why: Why::Flush,
                };
                let best = pending(never);
                (best.at != never.at).then_some(best)
            }
            Phase::Closing(_) => self.flush_at.map(|at| Deadline {
                at,
                why: Why::Flush,
            }),
            Phase::Dispersed(_) => None,
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush_at = None;
        }
        if matches!(self.phase, Phase::Live | Phase::Asking(_))
            && self.retry_due.is_some_and(|at| at <= now)
        {
            self.resend_due(now);
        }
        if matches!(self.phase, Phase::Live | Phase::Asking(_)) {
            self.flush_presence(now);
        }
        if self.phase != Phase::Live {
            return;
        }
        if let Some(reason) = self.leaving {
            self.ask(reason, Duration::ZERO);
        } else if now >= self.idle_deadline() {
            self.ask(
                DisperseReason::Idle,
                now.saturating_since(self.idle_deadline()),
            );
        } else if let (Some(grace), Some(since)) = (self.config.empty_grace, self.empty_since)
            && now >= since + grace
        {
            self.ask(DisperseReason::Empty, now.saturating_since(since + grace));
        }
    }

    fn resend_due(&mut self, now: Instant) {
        let max = self.config.max_retry_interval;
        let mut next: Option<Instant> = None;
        for (conn, c) in self.conns.iter_mut() {
            if let Some(frames) = c.due(now, max) {
                self.actions
                    .extend(frames.into_iter().map(|frame| Action::Send {
                        conn,
                        frame,
                        delivery: Delivery::Retried,
                    }));
            }
            if let Some(at) = c.retry_at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.retry_due = next;
    }

    pub(super) fn ask(&mut self, reason: DisperseReason, late: Duration) {
        self.phase = Phase::Asking(reason);
        self.actions.push_back(Action::Disperse {
            reason,
            processed: self.processed,
            late,
        });
    }

    fn on_verdict(&mut self, verdict: Verdict) {
        // A verdict for a request that no longer stands (e.g. after shutdown
        // began) is stale and ignored.
        let Phase::Asking(reason) = self.phase else {
            return;
        };
        match verdict {
            Verdict::Granted => self.start_closing(reason),
            Verdict::Refused => self.phase = Phase::Live,
        }
    }

    pub(super) fn start_closing(&mut self, reason: DisperseReason) {
        self.phase = Phase::Closing(reason);
        // Pending forwards are not retried past dispersal: the ops are
        // durable, and a client that rejoins fetches them.
        for (_, c) in self.conns.iter_mut() {
            c.unacked.clear();
            c.retry_at = None;
        }
        self.retry_due = None;
        self.try_finish();
    }

    /// Closes the gathering once its final snapshot is durable.
    #[inline]
    pub(super) fn try_finish(&mut self) {
        let Phase::Closing(reason) = self.phase else {
            return;
        };
        if self.durable < self.seq {
            return;
        }
        let goodbye = ServerMsg::<&A::Op, &A>::Dispersed { reason };
        let mut frames: [Option<Frame>; 2] = [None, None];
        for (conn, c) in self.conns.take() {
            let frame = frames[c.encoding as usize]
                .get_or_insert_with(|| encode_or_internal_error(&goodbye, c.encoding))
                .clone();
            self.actions.push_back(Action::Send {
                conn,
                frame,
                delivery: Delivery::Once,
            });
            self.actions.push_back(Action::Close {
                conn,
                code: reason.close_code(),
                reason: reason.close_text(),
            });
        }
        self.phase = Phase::Dispersed(reason);
        self.actions.push_back(Action::Dispersed { reason });
    }
}
