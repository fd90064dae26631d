//! What goes into a gathering ([`Event`], carrying an [`Inbound`] message
//! or the hall's [`Verdict`]) and what comes out ([`Action`], and the
//! [`Deadline`] it next needs a tick at).

use crate::clock::{Duration, Instant};
use crate::commit::Commit;
use crate::protocol::{DisperseReason, Encoding, Frame};
use crate::{ConnId, SessionId, SharedMember};

/// A join's session, and where its client's history stands: what
/// `?session=S&since=K&epoch=E` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionJoin {
    /// The client's session.
    pub session: SessionId,
    /// The highest op number the client has seen: it resumes after it.
    pub since: Option<u64>,
    /// The gathering's epoch the client saw `since` in (its `welcome`'s).
    pub epoch: Option<u64>,
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
        /// Its session, if it joins with one (see docs/PROTOCOL.md): it
        /// is then welcomed, resumed, and its ops apply exactly once.
        /// `None`: today's protocol, exactly.
        session: Option<Box<SessionJoin>>,
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
        /// Its session, as joined: a frame that reaches a gathering without
        /// its join (see `member`) still applies its op at most once.
        session: Option<SessionId>,
    },
    /// The connection's socket closed.
    Leave {
        /// The connection.
        conn: ConnId,
        /// Its client closed it (close code 1000): a session's member
        /// leaves the presence at once, where a lost connection is held
        /// for the grace.
        clean: bool,
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
            session: None,
        }
    }

    /// A data frame from connection `conn`, the open server's member of
    /// its own.
    pub fn open_frame(conn: ConnId, frame: Frame) -> Self {
        Inbound::Frame {
            conn,
            frame,
            member: None,
            session: None,
        }
    }

    /// The connection this concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            Inbound::Join { conn, .. }
            | Inbound::Frame { conn, .. }
            | Inbound::Leave { conn, .. } => *conn,
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

/// An input to a [`Gathering`](crate::Gathering). Every input carries the host's current time.
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
    /// The host hands the gathering to another node of its cluster (it
    /// drains, or lost its lease): persist, say goodbye with reason
    /// `moved`, close, as a shutdown does but telling clients to join again
    /// at once.
    Handoff(Instant),
    /// As [`Event::PersistFailed`], because the store refused the commit:
    /// another node claimed the gathering. It disperses with reason `moved`.
    Fenced(Instant),
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

/// An output of a [`Gathering`](crate::Gathering), drained with [`Gathering::poll_action`](crate::Gathering::poll_action).
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
    /// Write this commit durably (see [`Commit`](crate::Commit) for what a store must
    /// do), then answer with [`Event::Persisted`] of its `seq` (or
    /// [`Event::PersistFailed`]). Unless [`Config::overlap_commits`](crate::Config::overlap_commits) is
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
    /// A presence diff is due, or a lost member's grace ends.
    Presence,
    /// The gathering must leave (a failed or fenced commit, a handoff) and
    /// the hall refused it: traffic was on its way. Once that traffic is
    /// handled (a host handles waiting mail before its timer), it asks
    /// again.
    Leave,
}

/// When a gathering must next be ticked, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The duty due then.
    pub why: Why,
}
