//! One task per gathering: the core's run loop over a mailbox, one timer, the
//! connections' outboxes and the group-commit writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use futures_util::StreamExt;
use gathering_core::tournament::Tournament;
use gathering_core::{
    Action, ConnMap, DisperseReason, Event, Gathering, GatheringId, Inbound, Instant, Verdict, Why,
};

use crate::metrics::ReasonLabel;
use crate::outbox::Outbox;
use crate::server::{Detection, Shared};
use crate::store::{Stored, Write};
use crate::timer::Timer;

/// The sending end of a gathering's mailbox: unbounded (the hall must never
/// wait on one gathering) and empty-cheap (most gatherings are idle).
pub type Mailbox = futures_channel::mpsc::UnboundedSender<Mail>;

/// Mail for a gathering task, in the order it must be handled.
#[derive(Debug)]
pub enum Mail {
    /// Routed by the hall; a join carries the connection's outbox.
    Inbound(Inbound, Option<Outbox>),
    /// The hall's answer to a dispersal request.
    Verdict(Verdict),
    /// The snapshot of op `seq` is durable.
    Persisted(u64),
    /// The last snapshot could not be written.
    PersistFailed(String),
    /// The server is shutting down.
    Shutdown,
}

/// Most mails handled before actions are carried out; ops among them share
/// one snapshot.
const BATCH: usize = 64;

/// Mailbox wake-ups in a row after which the clock is checked for a due
/// timer (see the run loop).
const BUSY_CHECK: u32 = 64;

/// What `GET /gatherings` shows of a gathering, published without locks.
#[derive(Debug, Default)]
pub struct Status {
    /// Connections joined.
    pub connections: AtomicU32,
    /// Last activity, core nanoseconds.
    pub last_activity: AtomicU64,
    /// When it disperses if nothing happens, core nanoseconds.
    pub idle_deadline: AtomicU64,
}

struct Task {
    gathering: Gathering<Tournament>,
    me: Mailbox,
    shared: Arc<Shared>,
    outboxes: ConnMap<Outbox>,
    status: Arc<Status>,
    /// Lateness of the last dispersal request, for the log line.
    lateness: Option<std::time::Duration>,
    done: bool,
}

/// Runs the gathering of `task` until it has dispersed, then tells the hall.
///
/// Takes the task whole, built by [`spawn`], and is a plain fn returning an
/// `async move` block rather than an async fn: an async fn rebinds its
/// arguments, and its future then holds the task twice (the argument and
/// the local, 432 bytes each, in every idle gathering); the block uses what
/// it captured in place.
#[allow(clippy::manual_async_fn)] // deliberately not one: see above
fn run(
    mut task: Task,
    mut mailbox: futures_channel::mpsc::UnboundedReceiver<Mail>,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Everything this future keeps across an await is held by every idle
        // gathering: what can be read from `task` when needed is not copied
        // into locals here.
        let detection = task.shared.config.detection;
        let mut timer = Timer::default();
        let mut armed: Option<Instant> = None;
        // Only for `Detection::RearmPerMessage`: the per-message timer the
        // benchmarks compare against (absent otherwise: it would cost every
        // gathering a timer entry).
        let mut rearmed = (detection == Detection::RearmPerMessage)
            .then(|| Box::pin(tokio::time::sleep_until(task.never())));
        // Wake-ups in a row that were served from the mailbox alone.
        let mut busy: u32 = 0;
        task.publish();
        while !task.done {
            // The core's contract: one timer, re-armed only when it fired or an
            // earlier deadline appeared.
            if let Some(deadline) = task.gathering.next_deadline()
                && armed.is_none_or(|at| deadline.at < at)
                && (detection == Detection::Exact
                    || !matches!(deadline.why, Why::Idle | Why::Empty))
            {
                armed = Some(deadline.at);
            }
            // The select below is biased to the mailbox, so a wake-up with mail
            // waiting never polls the timer (which would cost a timer poll per
            // message under light load). Under a steady stream of mail the timer
            // would then never be looked at: every BUSY_CHECK such wake-ups, the
            // clock is, so a due retry or flush waits at most that long.
            if busy >= BUSY_CHECK {
                busy = 0;
                if armed.is_some_and(|at| task.shared.clock.now() >= at) {
                    armed = None;
                    task.tick();
                    task.carry_out();
                    task.publish();
                    continue;
                }
            }
            tokio::select! {
                biased;
                mail = mailbox.next() => {
                    busy += 1;
                    let Some(mail) = mail else { break };
                    task.handle(mail);
                    for _ in 1..BATCH {
                        match mailbox.try_recv() {
                            Ok(mail) => task.handle(mail),
                            Err(_) => break,
                        }
                    }
                    if let Some(rearmed) = rearmed.as_mut() {
                        let clock = task.shared.clock;
                        let idle_timeout = task.shared.config.gathering.idle_timeout;
                        rearmed.as_mut().reset(clock.to_tokio(clock.now() + idle_timeout));
                    }
                }
                () = std::future::poll_fn(|cx| match armed {
                    Some(at) => task.shared.timers.poll(&mut timer, task.shared.clock.to_std(at), cx),
                    None => std::task::Poll::Pending,
                }), if armed.is_some() => {
                    busy = 0;
                    armed = None;
                    task.tick();
                }
                () = async {
                    match rearmed.as_mut() {
                        Some(sleep) => sleep.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(sleep) = rearmed.as_mut() {
                        sleep.as_mut().reset(task.never());
                    }
                    task.tick();
                }
            }
            task.carry_out();
            task.publish();
        }
        // Nothing should be left (the hall grants only when all was processed),
        // but whatever is goes back to the hall for the successor, in order.
        let id = task.gathering.id().clone();
        let shared = task.shared.clone();
        mailbox.close();
        let mut leftover = Vec::new();
        while let Ok(mail) = mailbox.try_recv() {
            if let Mail::Inbound(inbound, outbox) = mail {
                leftover.push((inbound, outbox));
            }
        }
        if let Ok(mut registry) = shared.registry.lock() {
            registry.remove(&id);
        }
        shared.metrics.gatherings_live.dec();
        shared.hall_state().dispersed(id, leftover, &shared);
    }
}

impl Task {
    /// A timer instant that never comes.
    fn never(&self) -> tokio::time::Instant {
        self.shared.clock.to_tokio(Instant::from_nanos(u64::MAX))
    }

    /// A timer fired. It proves nothing: the core decides on `now`.
    fn tick(&mut self) {
        self.gathering.handle(Event::Tick(self.shared.clock.now()));
    }

    fn handle(&mut self, mail: Mail) {
        let now = self.shared.clock.now();
        let event = match mail {
            Mail::Inbound(inbound, outbox) => {
                self.shared.metrics.messages_processed.inc();
                if let (Inbound::Join { conn, .. }, Some(outbox)) = (&inbound, outbox) {
                    self.outboxes.insert(*conn, outbox);
                }
                if let Inbound::Leave { conn } = &inbound {
                    self.outboxes.remove(*conn);
                }
                Event::Message(now, inbound)
            }
            Mail::Verdict(v) => Event::Verdict(now, v),
            Mail::Persisted(seq) => Event::Persisted(now, seq),
            Mail::PersistFailed(e) => {
                tracing::warn!(id = %self.gathering.id(), error = %e, "snapshot not written; will retry");
                Event::PersistFailed(now)
            }
            Mail::Shutdown => Event::Shutdown(now),
        };
        self.gathering.handle(event);
    }

    fn carry_out(&mut self) {
        while let Some(action) = self.gathering.poll_action() {
            match action {
                Action::Send {
                    conn,
                    frame,
                    delivery,
                } => {
                    if let Some(outbox) = self.outboxes.get(conn)
                        && !outbox.send(frame, delivery)
                    {
                        self.outboxes.remove(conn);
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(outbox) = self.outboxes.remove(conn) {
                        outbox.close(code, reason);
                    }
                }
                Action::Persist { seq, snapshot } => {
                    let write = Write {
                        id: self.gathering.id().clone(),
                        stored: Stored { seq, snapshot },
                    };
                    if self
                        .shared
                        .persister
                        .submit(write, self.me.clone())
                        .is_err()
                    {
                        tracing::error!(id = %self.gathering.id(), "storage writer is gone");
                        self.gathering
                            .handle(Event::PersistFailed(self.shared.clock.now()));
                    }
                }
                Action::Disperse {
                    reason,
                    processed,
                    late,
                } => {
                    // The request that is granted is the last one asked.
                    self.lateness = Some(late);
                    let id = self.gathering.id().clone();
                    // Decided at once, under the hall's lock (see `hall_task`).
                    let verdict = self.shared.hall_state().request_dispersal(
                        id,
                        processed,
                        reason,
                        &self.shared,
                    );
                    self.gathering
                        .handle(Event::Verdict(self.shared.clock.now(), verdict));
                }
                Action::Dispersed { reason } => self.dispersed(reason),
                Action::Bounce(inbound) => {
                    let outbox = match &inbound {
                        Inbound::Join { conn, .. } => self.outboxes.remove(*conn),
                        _ => None,
                    };
                    let id = self.gathering.id().clone();
                    self.shared
                        .hall_state()
                        .route(id, inbound, outbox, &self.shared);
                }
            }
        }
    }

    fn dispersed(&mut self, reason: DisperseReason) {
        let metrics = &self.shared.metrics;
        metrics
            .gatherings_dispersed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        let lateness = self.lateness.unwrap_or_default();
        if matches!(reason, DisperseReason::Idle | DisperseReason::Empty) {
            metrics.dispersal_lateness.observe(lateness.as_secs_f64());
            if self.shared.config.record_lateness
                && let Ok(mut samples) = metrics.lateness_samples.lock()
            {
                samples.push(lateness.as_secs_f64());
            }
        }
        tracing::info!(
            id = %self.gathering.id(),
            reason = %reason,
            lateness_us = lateness.as_micros() as u64,
            seq = self.gathering.seq(),
            "gathering dispersed"
        );
        self.done = true;
    }

    fn publish(&self) {
        let g = &self.gathering;
        self.status
            .connections
            .store(g.connections() as u32, Ordering::Relaxed);
        self.status
            .last_activity
            .store(g.last_activity().as_nanos(), Ordering::Relaxed);
        self.status
            .idle_deadline
            .store(g.idle_deadline().as_nanos(), Ordering::Relaxed);
    }
}

/// Starts the task of a freshly loaded gathering; returns its mailbox.
pub fn spawn(gathering: Gathering<Tournament>, shared: &Arc<Shared>) -> Mailbox {
    let (tx, rx) = futures_channel::mpsc::unbounded();
    let status = Arc::new(Status::default());
    let id: GatheringId = gathering.id().clone();
    if let Ok(mut registry) = shared.registry.lock() {
        registry.insert(id, status.clone());
    }
    shared.metrics.gatherings_live.inc();
    shared.metrics.gatherings_spawned.inc();
    let task = Task {
        gathering,
        me: tx.clone(),
        shared: shared.clone(),
        outboxes: ConnMap::default(),
        status,
        lateness: None,
        done: false,
    };
    tokio::spawn(run(task, rx));
    tx
}
