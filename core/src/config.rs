//! A gathering's tunables and their production defaults.

use crate::clock::Duration;

/// Ops logged between two snapshots, by default: a load replays at most
/// this many (BENCHMARKS.md, "Durability and replay", says what that
/// costs a spawn).
pub const DEFAULT_SNAPSHOT_OPS: u32 = 1024;
/// Bytes logged between two snapshots, by default.
pub const DEFAULT_SNAPSHOT_BYTES: u32 = 1 << 20;

/// Ops of one connection waiting for their commit, by default: far more
/// than a client needs to keep a link busy (16 in flight saturate this
/// server), and well below what a connection's outbox holds for replies.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

/// Sessions a gathering remembers (the most recently active), by default.
pub const DEFAULT_MAX_SESSIONS: u32 = 4096;

/// Ops a session's record keeps the seq of: an op retried after this many
/// more of its session's ops were applied is refused as stale.
pub const SESSION_RECENT_OPS: usize = 256;

/// Bytes one member's presence may take encoded, by default.
pub const DEFAULT_MAX_PRESENCE_BYTES: u32 = 1024;
/// How long a member whose connection was lost (no close frame) stays
/// present, by default: a rejoin within it shows no leave and no join.
pub const DEFAULT_PRESENCE_GRACE: Duration = Duration::from_secs(10);
/// Presence changes go out at most this often, the latest winning.
pub const PRESENCE_INTERVAL: Duration = Duration::from_millis(50);
/// Presence updates one member may send a second, after a burst of as
/// many; more are dropped (error `rate_limited`).
pub const PRESENCE_PER_SEC: u32 = 50;

/// First wait before an unacknowledged forward is re-sent, by default.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The wait before a re-send doubles after each, up to this many times the
/// first (by default, and on the server whatever the first).
pub const RETRY_BACKOFF_CAP: u32 = 30;

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
    /// ([`CLOSE_POLICY`](crate::protocol::CLOSE_POLICY)) rather than buffered without bound.
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
    /// last is not durable yet ([`Action::Persist`](crate::Action::Persist) says what the host then
    /// owes). An op accepted while its gathering's previous commit waits
    /// for a write to start then goes into that same write, instead of the
    /// one after: under group commit, ack latency falls and each write, and
    /// each connection's socket write, carries more ops. Off, a gathering
    /// has at most one commit outstanding.
    pub overlap_commits: bool,
    /// Sessions a gathering remembers: past this, the least recently
    /// active is forgotten (an op it retries then applies again, and a
    /// resume of it gets `last_op` null).
    pub max_sessions: u32,
    /// Durable ops a gathering with sessions keeps in memory, newest
    /// first, to resume a client op by op (older: a `resync`); and the
    /// most bytes of log entries they may hold.
    pub resume_ops: u32,
    /// See `resume_ops`.
    pub resume_bytes: u32,
    /// Bytes one member's presence may take, encoded as it was sent;
    /// larger gets error `presence_too_large`.
    pub max_presence_bytes: u32,
    /// How long a member whose last connection was lost without a close
    /// frame stays present.
    pub presence_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(24 * 60 * 60),
            empty_grace: None,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            max_retry_interval: DEFAULT_RETRY_INTERVAL.saturating_mul(RETRY_BACKOFF_CAP),
            max_unacked: 1024,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            snapshot_ops: DEFAULT_SNAPSHOT_OPS,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            max_connections: u32::MAX,
            max_ops_per_sec: 0,
            op_burst: 0,
            max_gatherings: u32::MAX,
            overlap_commits: false,
            max_sessions: DEFAULT_MAX_SESSIONS,
            resume_ops: DEFAULT_SNAPSHOT_OPS,
            resume_bytes: DEFAULT_SNAPSHOT_BYTES,
            max_presence_bytes: DEFAULT_MAX_PRESENCE_BYTES,
            presence_grace: DEFAULT_PRESENCE_GRACE,
        }
    }
}
