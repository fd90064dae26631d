//! One task per gathering: the core's run loop over a mailbox, one timer,
//! the connections' handles and the host's storage.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use futures_util::StreamExt;
use gathering_core::{
    Action, ConnMap, Deadline, DisperseReason, Duration, Event, Gathering, Inbound,
};

use crate::mail::{Durable, Mail, Mailbox};
use crate::runtime::{Conn, Observed, Runtime};
use crate::status::Status;

/// Most mails handled before actions are carried out; ops among them share
/// one snapshot.
const BATCH: usize = 64;

/// Mailbox wake-ups in a row after which the clock is checked for a due
/// timer (see the run loop).
const BUSY_CHECK: u32 = 64;

/// A loaded gathering with its mailbox, ready to run: hand it to
/// [`Runtime::spawn`], which runs [`GatheringLoop::run`].
pub struct GatheringLoop<R: Runtime> {
    task: Task<R>,
    mailbox: futures_channel::mpsc::UnboundedReceiver<Mail<R::Conn>>,
}

impl<R: Runtime> std::fmt::Debug for GatheringLoop<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatheringLoop")
            .field("gathering", &self.task.gathering)
            .finish_non_exhaustive()
    }
}

struct Task<R: Runtime> {
    gathering: Gathering<R::App>,
    me: Mailbox<R::Conn>,
    rt: R,
    conns: ConnMap<R::Conn>,
    status: Arc<Status>,
    /// Lateness of the last dispersal request in nanoseconds, for the
    /// host's observation (8 bytes where an `Option<Duration>` takes 16,
    /// in every idle gathering).
    late_nanos: u64,
    done: bool,
}

/// Wraps `gathering` in a task with a new mailbox; the sender is for the hall.
pub(crate) fn new<R: Runtime>(
    gathering: Gathering<R::App>,
    rt: &R,
) -> (GatheringLoop<R>, Mailbox<R::Conn>, Arc<Status>) {
    let (tx, rx) = futures_channel::mpsc::unbounded();
    let status = Arc::new(Status::default());
    rt.observe(Observed::Spawned {
        id: gathering.id(),
        seq: gathering.seq(),
        status: &status,
    });
    let task = Task {
        gathering,
        me: tx.clone(),
        rt: rt.clone(),
        conns: ConnMap::default(),
        status: status.clone(),
        late_nanos: 0,
        done: false,
    };
    (GatheringLoop { task, mailbox: rx }, tx, status)
}

/// What woke the task.
enum Woke<C> {
    Mail(Option<Mail<C>>),
    Timer,
}

impl<R: Runtime> GatheringLoop<R> {
    /// Runs the gathering until it has dispersed, then reports its
    /// departure to the hall, with any mail it did not process.
    ///
    /// A plain fn returning an `async move` block rather than an async fn:
    /// an async fn rebinds its argument, and its future then holds the task
    /// twice in every idle gathering; the block uses what it captured in
    /// place. What this future keeps across an await is held by every idle
    /// gathering, so nothing that can be read from the task is copied into
    /// locals.
    #[allow(clippy::manual_async_fn)] // deliberately not one: see above
    pub fn run(mut self) -> impl Future<Output = ()> {
        async move {
            // Borrowed in place, not moved out: a `let` that destructured
            // `self` would give the future a second copy of the whole task
            // (the captured `self` keeps its slot).
            let task = &mut self.task;
            let mailbox = &mut self.mailbox;
            let mut timer = R::Timer::default();
            let mut armed: Option<Deadline> = None;
            // Wake-ups in a row that were served from the mailbox alone.
            let mut busy: u32 = 0;
            task.publish();
            while !task.done {
                // The core's contract: one timer, re-armed only when it fired
                // or an earlier deadline appeared.
                if let Some(deadline) = task.gathering.next_deadline()
                    && armed.is_none_or(|a| deadline.at < a.at)
                {
                    armed = Some(deadline);
                }
                // The wait below looks at the mailbox first, so a wake-up with
                // mail waiting never polls the timer (a timer poll per message
                // under light load). Under a steady stream of mail the timer
                // would then never be looked at: every BUSY_CHECK such
                // wake-ups, the clock is, so a due retry or flush waits at
                // most that long.
                if busy >= BUSY_CHECK {
                    busy = 0;
                    if armed.is_some_and(|a| task.rt.now() >= a.at) {
                        armed = None;
                        task.tick();
                        task.carry_out();
                        task.publish();
                        continue;
                    }
                }
                let woke = std::future::poll_fn(|cx| {
                    if let Poll::Ready(mail) = mailbox.poll_next_unpin(cx) {
                        return Poll::Ready(Woke::Mail(mail));
                    }
                    match armed {
                        Some(at) if task.rt.poll_timer(&mut timer, at, cx).is_ready() => {
                            Poll::Ready(Woke::Timer)
                        }
                        _ => Poll::Pending,
                    }
                })
                .await;
                match woke {
                    Woke::Mail(None) => break,
                    Woke::Mail(Some(mail)) => {
                        busy += 1;
                        let mut inbound = task.handle(mail);
                        for _ in 1..BATCH {
                            match mailbox.try_recv() {
                                Ok(mail) => inbound += task.handle(mail),
                                _ => break,
                            }
                        }
                        task.rt.handled(&mut timer, inbound);
                    }
                    Woke::Timer => {
                        busy = 0;
                        armed = None;
                        task.tick();
                    }
                }
                task.carry_out();
                task.publish();
            }
            self.task.finish(self.mailbox);
        }
    }
}

impl<R: Runtime> Task<R> {
    /// A timer fired. It proves nothing: the core decides on `now`.
    fn tick(&mut self) {
        self.gathering.handle(Event::Tick(self.rt.now()));
    }

    /// Feeds one mail to the core; returns 1 for a message from a
    /// connection, 0 otherwise.
    fn handle(&mut self, mail: Mail<R::Conn>) -> u32 {
        let now = self.rt.now();
        let mut inbound = 0;
        let event = match mail {
            Mail::Inbound(message, conn) => {
                inbound = 1;
                match (&message, conn) {
                    (Inbound::Join { conn: id, .. }, Some(conn)) => {
                        self.conns.insert(*id, conn);
                    }
                    (Inbound::Leave { conn, .. }, _) => {
                        self.conns.remove(*conn);
                    }
                    (Inbound::Frame { conn, .. }, _) => {
                        if let Some(handle) = self.conns.get(*conn) {
                            handle.received();
                        }
                    }
                    _ => {}
                }
                Event::Message(now, message)
            }
            Mail::Verdict(v) => Event::Verdict(now, v),
            Mail::Persisted(seq) => Event::Persisted(now, seq),
            Mail::PersistFailed(error) => {
                self.rt.observe(Observed::PersistFailed {
                    id: self.gathering.id(),
                    error: &error,
                });
                Event::PersistFailed(now)
            }
            Mail::Shutdown => Event::Shutdown(now),
            Mail::Evict => Event::Evict(now),
            Mail::Handoff => Event::Handoff(now),
            Mail::Fenced(why) => {
                self.rt.observe(Observed::PersistFailed {
                    id: self.gathering.id(),
                    error: &why,
                });
                Event::Fenced(now)
            }
        };
        self.gathering.handle(event);
        inbound
    }

    fn carry_out(&mut self) {
        while let Some(action) = self.gathering.poll_action() {
            match action {
                Action::Send {
                    conn,
                    frame,
                    delivery,
                } => {
                    if let Some(handle) = self.conns.get(conn)
                        && !handle.send(frame, delivery)
                    {
                        self.conns.remove(conn);
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(handle) = self.conns.remove(conn) {
                        handle.close(code, reason);
                    }
                }
                Action::Persist(commit) => {
                    let durable = Durable::new(commit.seq, self.me.clone());
                    self.rt.persist(self.gathering.id(), commit, durable);
                }
                Action::Disperse {
                    reason,
                    processed,
                    late,
                } => {
                    // The request that is granted is the last one asked.
                    self.late_nanos = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                    let id = self.gathering.id().clone();
                    self.rt.observe(Observed::DisperseRequested {
                        id: &id,
                        reason,
                        processed,
                    });
                    // Decided at once, under the hall's lock: ask, verdict
                    // and departure in this one wake-up (see `hall`).
                    let verdict = self.rt.hall().request_dispersal(id, processed, &self.rt);
                    self.gathering
                        .handle(Event::Verdict(self.rt.now(), verdict));
                }
                Action::Refused { code, .. } => self.rt.observe(Observed::Refused {
                    id: self.gathering.id(),
                    code,
                }),
                Action::Dispersed { reason } => self.dispersed(reason),
                Action::Bounce(inbound) => {
                    let conn = match &inbound {
                        Inbound::Join { conn, .. } => self.conns.remove(*conn),
                        _ => None,
                    };
                    let id = self.gathering.id().clone();
                    self.rt.hall().route(id, inbound, conn, &self.rt);
                }
            }
        }
    }

    fn dispersed(&mut self, reason: DisperseReason) {
        let late = match reason {
            DisperseReason::Idle | DisperseReason::Empty => Duration::from_nanos(self.late_nanos),
            DisperseReason::Shutdown
            | DisperseReason::StorageFailed
            | DisperseReason::Evicted
            | DisperseReason::Moved => Duration::ZERO,
        };
        self.rt.observe(Observed::Dispersed {
            id: self.gathering.id(),
            reason,
            late,
            seq: self.gathering.seq(),
        });
        self.done = true;
    }

    fn publish(&self) {
        let g = &self.gathering;
        self.status
            .publish(g.connections(), g.last_activity(), g.seq());
    }

    /// Hands anything left back to the hall for the successor, in order,
    /// and reports the departure.
    fn finish(self, mut mailbox: futures_channel::mpsc::UnboundedReceiver<Mail<R::Conn>>) {
        // Nothing should be left (the hall grants only when all was
        // processed), but whatever is goes to the successor.
        mailbox.close();
        let mut leftover = Vec::new();
        while let Ok(mail) = mailbox.try_recv() {
            if let Mail::Inbound(inbound, conn) = mail {
                leftover.push((inbound, conn));
            }
        }
        let id = self.gathering.id().clone();
        self.rt.hall().dispersed(id, leftover, &self.rt);
    }
}
