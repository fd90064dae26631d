//! One task per in-page gathering: the core's run loop over a mailbox, one
//! timer, the connections it serves and the storage.

use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use futures_timer::Delay;
use futures_util::future::{Either, select};
use gathering_core::tournament::Tournament;
use gathering_core::{
    Action, ConnMap, DisperseReason, Event, Gathering, Inbound, Instant, Verdict,
};

use crate::hall_task::HallMail;
use crate::peer::Peer;
use crate::shared::{Shared, Status};
use crate::storage::Stored;

/// Mail for a gathering task, in the order it must be handled.
#[derive(Debug)]
pub enum Mail {
    /// Routed by the hall; a join carries the connection.
    Inbound(Inbound, Option<Rc<Peer>>),
    /// The hall's answer to a dispersal request.
    Verdict(Verdict),
    /// The snapshot of op `seq` is durable.
    Persisted(u64),
    /// The last snapshot could not be written.
    PersistFailed(String),
    /// The host is shutting down.
    Shutdown,
}

/// Most mails handled before actions are carried out; ops among them share
/// one snapshot.
const BATCH: usize = 64;

/// Longest single timer wait. `setTimeout` fires at once for delays beyond
/// 2^31 - 1 ms (about 24.8 days); a timer capped at one day merely fires
/// early, which the core's contract allows: the tick changes nothing and the
/// timer is re-armed.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

struct Task {
    gathering: Gathering<Tournament>,
    me: async_channel::Sender<Mail>,
    shared: Rc<Shared>,
    peers: ConnMap<Rc<Peer>>,
    status: Rc<Status>,
    /// Lateness of the last dispersal request.
    lateness: Option<Duration>,
    done: bool,
}

/// Starts the task of a freshly loaded gathering; returns its mailbox.
pub fn spawn(gathering: Gathering<Tournament>, shared: &Rc<Shared>) -> async_channel::Sender<Mail> {
    let (tx, rx) = async_channel::unbounded();
    let status = Rc::new(Status::default());
    shared
        .registry
        .borrow_mut()
        .insert(gathering.id().clone(), status.clone());
    let task = Task {
        gathering,
        me: tx.clone(),
        shared: shared.clone(),
        peers: ConnMap::default(),
        status,
        lateness: None,
        done: false,
    };
    wasm_bindgen_futures::spawn_local(task.run(rx));
    tx
}

/// What woke the task.
enum Woke {
    Mail(Option<Mail>),
    Timer,
}

impl Task {
    async fn run(mut self, mailbox: async_channel::Receiver<Mail>) {
        // The core's contract: one timer, re-armed only when it fired or an
        // earlier deadline appeared.
        let mut timer: Option<(Instant, Delay)> = None;
        self.publish();
        while !self.done {
            if let Some(deadline) = self.gathering.next_deadline()
                && timer.as_ref().is_none_or(|(at, _)| deadline.at < *at)
            {
                let wait = deadline.at.saturating_since(self.shared.clock.now());
                timer = Some((deadline.at, Delay::new(whole_millis(wait).min(MAX_WAIT))));
            }
            let woke = {
                let mail = pin!(mailbox.recv());
                let fired = pin!(async {
                    match timer.as_mut() {
                        Some((_, delay)) => delay.await,
                        None => std::future::pending().await,
                    }
                });
                match select(mail, fired).await {
                    Either::Left((mail, _)) => Woke::Mail(mail.ok()),
                    Either::Right(((), _)) => Woke::Timer,
                }
            };
            match woke {
                Woke::Mail(None) => break,
                Woke::Mail(Some(mail)) => {
                    self.handle(mail);
                    for _ in 1..BATCH {
                        match mailbox.try_recv() {
                            Ok(mail) => self.handle(mail),
                            Err(_) => break,
                        }
                    }
                }
                Woke::Timer => {
                    timer = None;
                    // A timer that fired proves nothing; the core decides on `now`.
                    self.gathering.handle(Event::Tick(self.shared.clock.now()));
                }
            }
            self.carry_out().await;
            self.publish();
        }
        self.finish(mailbox).await;
    }

    fn handle(&mut self, mail: Mail) {
        let now = self.shared.clock.now();
        let event = match mail {
            Mail::Inbound(inbound, peer) => {
                match (&inbound, peer) {
                    (Inbound::Join { conn, .. }, Some(peer)) => {
                        self.peers.insert(*conn, peer);
                    }
                    (Inbound::Leave { conn }, _) => {
                        self.peers.remove(*conn);
                    }
                    _ => {}
                }
                Event::Message(now, inbound)
            }
            Mail::Verdict(v) => Event::Verdict(now, v),
            Mail::Persisted(seq) => Event::Persisted(now, seq),
            Mail::PersistFailed(e) => {
                web_sys::console::warn_1(
                    &format!(
                        "gathering {}: snapshot not written ({e}); will retry",
                        self.gathering.id()
                    )
                    .into(),
                );
                Event::PersistFailed(now)
            }
            Mail::Shutdown => Event::Shutdown(now),
        };
        self.gathering.handle(event);
    }

    async fn carry_out(&mut self) {
        while let Some(action) = self.gathering.poll_action() {
            match action {
                // No socket buffer in a page: a frame reaches its handler at
                // once, so both deliveries are the same call.
                Action::Send { conn, frame, .. } => {
                    if let Some(peer) = self.peers.get(conn) {
                        peer.deliver(&frame);
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(peer) = self.peers.remove(conn)
                        && peer.close(code, reason)
                    {
                        // As when a socket closes: the hall hears of it.
                        let leave = Inbound::Leave { conn };
                        let route = HallMail::Route(peer.gathering.clone(), leave, None);
                        let _ = self.shared.hall.send(route).await;
                    }
                }
                Action::Persist { seq, snapshot } => self.persist(seq, snapshot),
                Action::Disperse {
                    processed, late, ..
                } => {
                    // The request that is granted is the last one asked.
                    self.lateness = Some(late);
                    let asked = HallMail::DisperseRequest {
                        id: self.gathering.id().clone(),
                        processed,
                    };
                    if self.shared.hall.send(asked).await.is_err() {
                        // No hall: nobody routes here any more; disperse.
                        let now = self.shared.clock.now();
                        self.gathering.handle(Event::Verdict(now, Verdict::Granted));
                    }
                }
                Action::Dispersed { reason } => self.dispersed(reason),
                Action::Bounce(inbound) => {
                    let peer = match &inbound {
                        Inbound::Join { conn, .. } => self.peers.remove(*conn),
                        _ => None,
                    };
                    let route = HallMail::Route(self.gathering.id().clone(), inbound, peer);
                    let _ = self.shared.hall.send(route).await;
                }
            }
        }
    }

    /// Writes the snapshot in the background; the answer comes back as mail.
    fn persist(&self, seq: u64, snapshot: Vec<u8>) {
        let id = self.gathering.id().clone();
        let storage = self.shared.storage.clone();
        let me = self.me.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let answer = match storage.save(&id, Stored { seq, snapshot }).await {
                Ok(()) => Mail::Persisted(seq),
                Err(e) => Mail::PersistFailed(e.to_string()),
            };
            // A closed mailbox means the gathering is gone; nothing to tell.
            let _ = me.send(answer).await;
        });
    }

    fn dispersed(&mut self, reason: DisperseReason) {
        if matches!(reason, DisperseReason::Idle | DisperseReason::Empty) {
            let lateness = self.lateness.unwrap_or_default();
            self.shared
                .lateness
                .borrow_mut()
                .push(lateness.as_secs_f64() * 1e3);
        }
        self.done = true;
    }

    /// Hands anything left back to the hall for the successor, in order,
    /// and reports the dispersal.
    async fn finish(self, mailbox: async_channel::Receiver<Mail>) {
        let id = self.gathering.id().clone();
        mailbox.close();
        while let Ok(mail) = mailbox.try_recv() {
            if let Mail::Inbound(inbound, peer) = mail {
                let _ = self
                    .shared
                    .hall
                    .send(HallMail::Route(id.clone(), inbound, peer))
                    .await;
            }
        }
        self.shared.registry.borrow_mut().remove(&id);
        let _ = self.shared.hall.send(HallMail::Dispersed(id)).await;
    }

    fn publish(&self) {
        let g = &self.gathering;
        self.status.connections.set(g.connections());
        self.status.seq.set(g.seq());
        self.status.last_activity.set(g.last_activity());
        self.status.idle_deadline.set(g.idle_deadline());
    }
}

/// `wait` rounded up to whole milliseconds: browser timers count whole
/// milliseconds and truncate, and a timer that fires before the deadline
/// only costs another round.
fn whole_millis(wait: Duration) -> Duration {
    let ms = wait.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
