//! The gathering: one live room's state, its connections, and when it ends.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::{Duration, Instant};
use crate::commit::{self, Commit, Loaded, LogEntry};
use crate::conn::{Conn, ConnMap};
use crate::protocol::{self, CLOSE_POLICY, ClientMsg, DisperseReason, Encoding, Frame, ServerMsg};
use crate::{App, ConnId, GatheringId, SharedMember};

/// Ops logged between two snapshots, by default: a load replays at most
/// this many (see BENCHMARKS.md for what that costs a spawn).
pub const DEFAULT_SNAPSHOT_OPS: u32 = 1024;
/// Bytes logged between two snapshots, by default.
pub const DEFAULT_SNAPSHOT_BYTES: u32 = 1 << 20;

/// Error code of an op whose commit failed: it was not applied.
pub const NOT_DURABLE: &str = "not_durable";
/// Error code of a request to a gathering whose storage failed.
pub const STORAGE_FAILED: &str = "storage_failed";

/// Ops of one connection waiting for their commit, by default: far more
/// than a client needs to keep a link busy (16 in flight saturate this
/// server), and well below what a connection's outbox holds for replies.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

/// Tunables of a gathering. `Default` gives the production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A gathering that processed no client message for this long disperses.
    pub idle_timeout: Duration,
    /// If set, a gathering whose last connection left, and that no connection
    /// rejoined within this grace, disperses too.
    pub empty_grace: Option<Duration>,
    /// First wait before an unacknowledged forward is re-sent.
    pub retry_interval: Duration,
    /// The wait doubles after each re-send, up to this.
    pub max_retry_interval: Duration,
    /// A connection with this many unacknowledged forwards is closed
    /// ([`CLOSE_POLICY`]) rather than buffered without bound.
    pub max_unacked: u32,
    /// Ops of one connection accepted and waiting for their commit; the
    /// next is refused with error `too_many_in_flight` and not applied. A
    /// commit releases every waiting ack at once, so this also bounds the
    /// burst a client that reads its replies receives.
    pub max_in_flight: u32,
    /// A commit carries a snapshot instead of log entries once this many
    /// ops were logged since the last snapshot, provided the log also holds
    /// at least as many bytes as that snapshot (so a large state is not
    /// rewritten every few ops: a load then replays at most about a
    /// snapshot's worth of log).
    pub snapshot_ops: u32,
    /// ... or once the log since the last snapshot holds this many bytes.
    /// (Both are `u32`: every idle gathering holds its config.)
    pub snapshot_bytes: u32,
    /// Connections at once; the next is closed with 1013 (try again
    /// later). `u32::MAX` for no bound.
    pub max_connections: u32,
    /// Ops a second one connection may send, after a burst of
    /// `op_burst`; more are refused with error `rate_limited` and not
    /// applied, and a connection that goes on sending `op_burst` more in a
    /// row is closed with 1008. A fetch counts as an op here: it costs the
    /// gathering at least as much. `0` for no limit.
    pub max_ops_per_sec: u32,
    /// See `max_ops_per_sec`.
    pub op_burst: u32,
    /// Live gatherings a host holds; when another is wanted at the bound,
    /// the least recently active disperses early (reason `evicted`).
    /// `u32::MAX` for no bound. Read by the host's hall, not a gathering.
    pub max_gatherings: u32,
    /// Whether a gathering hands its next commit to the host while the
    /// last is not durable yet ([`Action::Persist`] says what the host then
    /// owes). An op accepted while its gathering's previous commit waits
    /// for a write to start then goes into that same write, instead of the
    /// one after: under group commit, ack latency falls and each write, and
    /// each connection's socket write, carries more ops. Off, a gathering
    /// has at most one commit outstanding.
    pub overlap_commits: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(24 * 60 * 60),
            empty_grace: None,
            retry_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(30),
            max_unacked: 1024,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            snapshot_ops: DEFAULT_SNAPSHOT_OPS,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            max_connections: u32::MAX,
            max_ops_per_sec: 0,
            op_burst: 0,
            max_gatherings: u32::MAX,
            overlap_commits: false,
        }
    }
}

/// Something routed to a gathering on behalf of a connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A new connection joins; it speaks `encoding` until its first frame.
    Join {
        /// The connection.
        conn: ConnId,
        /// The encoding to answer in before the client sends anything.
        encoding: Encoding,
        /// Who it is, as the host authenticated it; `None` on an open
        /// server: the member of its own named after the connection
        /// ([`Member::open`](crate::Member::open)), made only if it acts.
        member: Option<SharedMember>,
    },
    /// A data frame from a connection.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The frame as received.
        frame: Frame,
        /// Who it is (the member it joined as). A gathering acts with the
        /// member of the join it saw, and with this one for a frame that
        /// reaches it without a join: one sent while the connection's
        /// gathering dispersed, which its successor applies. `None` on an
        /// open server, as for a join.
        member: Option<SharedMember>,
    },
    /// The connection's socket closed.
    Leave {
        /// The connection.
        conn: ConnId,
    },
}

impl Inbound {
    /// Connection `conn` joins as the open server's member of its own
    /// ([`Member::open`](crate::Member::open)), speaking `encoding`.
    pub fn open_join(conn: ConnId, encoding: Encoding) -> Self {
        Inbound::Join {
            conn,
            encoding,
            member: None,
        }
    }

    /// A data frame from connection `conn`, the open server's member of
    /// its own.
    pub fn open_frame(conn: ConnId, frame: Frame) -> Self {
        Inbound::Frame {
            conn,
            frame,
            member: None,
        }
    }

    /// The connection this concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            Inbound::Join { conn, .. } | Inbound::Frame { conn, .. } | Inbound::Leave { conn } => {
                *conn
            }
        }
    }
}

/// The hall's answer to a [`Action::Disperse`] request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The hall stopped routing to this gathering and buffers its traffic.
    Granted,
    /// Traffic is on its way; the gathering lives on.
    Refused,
}

/// An input to a [`Gathering`]. Every input carries the host's current time.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Something the hall routed here.
    Message(Instant, Inbound),
    /// The host's timer fired (or the host just wants to check).
    Tick(Instant),
    /// The commit of op `seq` (see [`Action::Persist`]) is durable.
    Persisted(Instant, u64),
    /// An [`Action::Persist`] failed. Its ops, and those of any later
    /// outstanding commit, are refused to their
    /// senders (error `not_durable`), and the gathering disperses without
    /// persisting (reason `storage_failed`): what the store holds is the
    /// truth, and a successor loads it.
    PersistFailed(Instant),
    /// The hall's answer to a dispersal request.
    Verdict(Instant, Verdict),
    /// The host is shutting down: persist, say goodbye, close.
    Shutdown(Instant),
    /// The host wants room: disperse (reason `evicted`) if the hall agrees,
    /// as for an idle dispersal; a refusal (traffic on its way) keeps it.
    Evict(Instant),
}

/// How hard the host should try to deliver a [`Action::Send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Send once; if the socket is gone or full, drop it. Used for replies
    /// and for the `dispersed` courtesy message, which is never retried.
    Once,
    /// A forward: the gathering itself re-sends it until the connection
    /// acknowledges it, so the host may drop it when the socket is full.
    Retried,
}

/// An output of a [`Gathering`], drained with [`Gathering::poll_action`].
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write `frame` to `conn`, if that connection still exists.
    Send {
        /// The recipient.
        conn: ConnId,
        /// The encoded message, in the recipient's encoding.
        frame: Frame,
        /// Whether the gathering will re-send it.
        delivery: Delivery,
    },
    /// Close `conn` with a WebSocket close `code` and `reason`.
    Close {
        /// The connection.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason text (short, for people).
        reason: &'static str,
    },
    /// Write this commit durably (see [`Commit`] for what a store must
    /// do), then answer with [`Event::Persisted`] of its `seq` (or
    /// [`Event::PersistFailed`]). Unless [`Config::overlap_commits`] is
    /// set, at most one is outstanding at a time and ops accepted meanwhile
    /// are batched into the next. With it set, the next may come before the
    /// last is answered, and the host owes two more things: it writes one
    /// gathering's commits in the order given (several in one transaction
    /// is fine), and once one has failed it writes none of that
    /// gathering's later commits (each is answered as failed): otherwise
    /// the store's log would skip the failed ops, and a successor could
    /// not replay it.
    Persist(Commit),
    /// Ask the hall for permission to disperse; forward the hall's
    /// [`Verdict`] back as [`Event::Verdict`].
    Disperse {
        /// Why.
        reason: DisperseReason,
        /// How many [`Event::Message`]s this gathering has processed; the hall
        /// grants only if it has routed no more than that.
        processed: u64,
        /// How long after its deadline the tick that decided this came: the
        /// dispersal's lateness, for the host's logs and metrics (zero when
        /// ticked at `next_deadline`, as on a fake clock).
        late: Duration,
    },
    /// The gathering has persisted its final state and closed every
    /// connection. Tell the hall, then drop the gathering.
    Dispersed {
        /// Why.
        reason: DisperseReason,
    },
    /// This was routed here after dispersal began; hand it back to the hall,
    /// which will deliver it to the successor.
    Bounce(Inbound),
    /// A request of `conn` was refused; the error reply or close that tells
    /// its client comes next. Nothing to carry out: it is there
    /// for the host's counters.
    Refused {
        /// The connection.
        conn: ConnId,
        /// The error's code (`forbidden`, `rate_limited`, `bad_frame`, an
        /// app's own, ...), or, for a connection closed without one, `full`
        /// (a join past `max_connections`, closed with 1013), `flood` (far
        /// over the op rate, 1008) or `lagging` (at `max_unacked`, 1008).
        code: &'static str,
    },
}

/// Why a deadline is set; readable in logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The idle timeout expires.
    Idle,
    /// An unacknowledged forward is due for a re-send.
    Retry,
    /// A failed persist is due for another attempt.
    Flush,
    /// The gathering has been empty for the whole grace period.
    Empty,
}

/// When a gathering must next be ticked, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The duty due then.
    pub why: Why,
}

/// Where a gathering is in its life.
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
}

/// Encoded states smaller than this are not cached for the next fetch.
const FETCH_CACHE_MIN_BYTES: usize = 4096;

/// The state at op `seq`, encoded once per encoding asked for.
struct Fetched {
    seq: u64,
    json: Option<Frame>,
    postcard: Option<Frame>,
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
        let (mut app, mut seq) = match &loaded.snapshot {
            Some(snapshot) => match postcard::from_bytes::<A>(&snapshot.bytes) {
                Ok(app) => (app, snapshot.seq),
                Err(e) => return Err(fail(format!("snapshot of op {}: {e}", snapshot.seq))),
            },
            None => (A::default(), 0),
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
            let (by, op) = commit::decode_entry::<A::Op>(&entry.bytes)
                .map_err(|e| fail(format!("log entry of op {}: {e}", entry.seq)))?;
            app.apply(&by, &op)
                .map_err(|r| fail(format!("log entry of op {} does not apply: {r}", entry.seq)))?;
            seq = entry.seq;
            logged = add(logged, 1, entry.bytes.len());
        }
        let mut gathering = Self::with_state(id, config.into(), now, app, seq);
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
        }
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
                // handled, ask again.
                if self.broken && self.phase == Phase::Live {
                    self.ask(DisperseReason::StorageFailed, Duration::ZERO);
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
                self.on_persist_failed();
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

    /// The commit of every op not handed to the host yet: their log
    /// entries, or a snapshot once the log since the last one passes its
    /// bound, or when closing (a successor then loads without replaying).
    fn commit(&mut self) -> Result<Commit, postcard::Error> {
        // What awaits is what is not durable (it is released, and
        // forgotten, as soon as it is); the ops of outstanding commits
        // come first.
        let fresh = self.awaiting.iter().skip_while(|a| a.seq <= self.submitted);
        // Accepted ops are numbered one after another: this many are fresh.
        let mut log = Vec::with_capacity(usize::try_from(self.seq - self.submitted).unwrap_or(0));
        let mut bytes = 0u64;
        for a in fresh {
            let entry = commit::encode_entry(&a.by, &a.op)?;
            bytes += entry.len() as u64;
            log.push(LogEntry {
                seq: a.seq,
                bytes: entry,
            });
        }
        let (ops, bytes) = add(
            self.logged,
            log.len(),
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
        // A bound is passed, and the log outweighs the last snapshot (or the
        // gathering closes): a state that grows makes snapshots rarer, so
        // each logged byte pays for at most one byte of snapshot.
        let compact = ((ops >= self.config.snapshot_ops || bytes >= self.config.snapshot_bytes)
            && bytes >= self.snapshot_len)
            || matches!(self.phase, Phase::Closing(_));
        let commit = if compact {
            let snapshot = postcard::to_allocvec(&self.app)?;
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
            earliest(best, self.flush_at, Why::Flush)
        };
        match self.phase {
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

    fn on_inbound(&mut self, now: Instant, inbound: Inbound) {
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
                self.empty_since = None;
                if self.conns.get(conn).is_none() {
                    let fresh = Conn::new(encoding, member, self.config.retry_interval);
                    self.conns.insert(conn, fresh);
                }
            }
            Inbound::Leave { conn } => {
                if self.conns.remove(conn).is_some() && self.conns.is_empty() {
                    self.empty_since = Some(now);
                }
            }
            Inbound::Frame {
                conn,
                frame,
                member,
            } => self.on_frame(now, conn, &frame, member),
        }
    }

    fn on_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: &Frame,
        member: Option<SharedMember>,
    ) {
        let encoding = frame.encoding();
        if let Some(c) = self.conns.get_mut(conn) {
            c.encoding = encoding;
        }
        let msg = match protocol::decode::<ClientMsg<A::Op>>(frame) {
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
                    close_at_limit(
                        &mut self.actions,
                        conn,
                        "flood",
                        CLOSE_POLICY,
                        "op rate far over the limit",
                    );
                }
            }
            ClientMsg::Op { id, op } => match self.admit(conn) {
                Err(message) => refuse(
                    &mut self.actions,
                    conn,
                    encoding,
                    Some(id),
                    "too_many_in_flight",
                    message,
                ),
                Ok(()) => self.apply(conn, encoding, id, op, member),
            },
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

    /// Applies an op from `conn`: accepted, it waits for its commit;
    /// refused, the client hears why at once.
    fn apply(
        &mut self,
        conn: ConnId,
        encoding: Encoding,
        id: u64,
        op: A::Op,
        member: Option<SharedMember>,
    ) {
        let by = self.member(conn, member);
        match self.app.apply(&by, &op) {
            Ok(()) => {
                self.seq += 1;
                self.fetched = None;
                if let Some(c) = self.conns.get_mut(conn) {
                    c.in_flight += 1;
                }
                self.awaiting.push_back(Accepted {
                    seq: self.seq,
                    origin: conn,
                    by,
                    id,
                    op,
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

    fn on_tick(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush_at = None;
        }
        if matches!(self.phase, Phase::Live | Phase::Asking(_))
            && self.retry_due.is_some_and(|at| at <= now)
        {
            self.resend_due(now);
        }
        if self.phase != Phase::Live {
            return;
        }
        if now >= self.idle_deadline() {
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

    fn ask(&mut self, reason: DisperseReason, late: Duration) {
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

    fn start_closing(&mut self, reason: DisperseReason) {
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

    fn on_persist_failed(&mut self) {
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
        }
        // Nothing after the durable state is persisted or counted again
        // (a host that overlaps commits writes none after a failed one).
        self.seq = self.durable;
        self.submitted = self.durable;
        self.fetched = None;
        self.broken = true;
        match self.phase {
            Phase::Live => self.ask(DisperseReason::StorageFailed, Duration::ZERO),
            // The pending verdict decides; a refusal asks again.
            Phase::Asking(_) => {}
            // The final commit failed: close with what the store holds.
            Phase::Closing(_) => self.try_finish(),
            Phase::Dispersed(_) => {}
        }
    }

    fn on_persisted(&mut self, now: Instant, seq: u64) {
        self.durable = self.durable.max(seq.min(self.submitted));
        self.release(now);
        self.try_finish();
    }

    /// One op of `origin` no longer waits for its commit (acked or
    /// refused): its count comes down. Returns the encoding to answer in.
    fn settled(&mut self, origin: ConnId) -> Encoding {
        self.conns
            .get_mut(origin)
            .map_or_else(Encoding::default, |c| {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.encoding
            })
    }

    /// Acknowledges and forwards every op that is now durable.
    fn release(&mut self, now: Instant) {
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
            if matches!(self.phase, Phase::Live | Phase::Asking(_)) {
                self.forward(now, &accepted);
            }
        }
    }

    fn forward(&mut self, now: Instant, accepted: &Accepted<A::Op>) {
        let msg = ServerMsg::<&A::Op, &A>::Forward {
            seq: accepted.seq,
            op: &accepted.op,
        };
        // Encoded at most once per encoding, shared by every recipient.
        let mut frames: [Option<Frame>; 2] = [None, None];
        let mut lagging: Vec<ConnId> = Vec::new();
        for (conn, c) in self.conns.iter_mut() {
            if conn == accepted.origin {
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
            self.conns.remove(conn);
            close_at_limit(
                &mut self.actions,
                conn,
                "lagging",
                CLOSE_POLICY,
                "too many unacknowledged forwards",
            );
        }
        if self.conns.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(now);
        }
    }

    /// Closes the gathering once its final snapshot is durable.
    fn try_finish(&mut self) {
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

/// Queues the close of `conn` at a limit, counted as refusal `counted`
/// (see [`Action::Refused`]), like [`refuse`] counts an error.
fn close_at_limit(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    counted: &'static str,
    code: u16,
    reason: &'static str,
) {
    actions.push_back(Action::Refused {
        conn,
        code: counted,
    });
    actions.push_back(Action::Close { conn, code, reason });
}

/// Queues an `error` reply: request `id` (none: the frame did not decode)
/// failed and changed nothing. Every error passes here, so every message
/// a client is sent is [`protocol::bounded`].
fn refuse(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    encoding: Encoding,
    id: Option<u64>,
    code: &'static str,
    message: String,
) {
    let msg = ServerMsg::<(), ()>::Error {
        id,
        code: code.into(),
        message: protocol::bounded(message),
    };
    // Counted first, so that a client reading its error finds it counted.
    actions.push_back(Action::Refused { conn, code });
    reply(actions, conn, encoding, &msg);
}

/// Queues a reply, sent once.
fn reply<O: Serialize, S: Serialize>(
    actions: &mut VecDeque<Action>,
    conn: ConnId,
    encoding: Encoding,
    msg: &ServerMsg<O, S>,
) {
    actions.push_back(Action::Send {
        conn,
        frame: encode_or_internal_error(msg, encoding),
        delivery: Delivery::Once,
    });
}

/// Encodes `msg`; if the application's state cannot be encoded, the client
/// gets an error message that says so instead of nothing.
fn encode_or_internal_error<T: Serialize>(msg: &T, encoding: Encoding) -> Frame {
    protocol::encode(msg, encoding).unwrap_or_else(|e| internal_error(&e, encoding))
}

/// The error a client gets when what it asked for cannot be encoded.
fn internal_error(e: &protocol::EncodeError, encoding: Encoding) -> Frame {
    let fallback = ServerMsg::<(), ()>::Error {
        id: None,
        code: "internal".into(),
        message: e.to_string(),
    };
    protocol::encode(&fallback, encoding).unwrap_or(Frame::Text("".into()))
}
