//! The hall of one server: the core [`Hall`] with the mailboxes of live
//! gatherings and the outboxes of joins it holds, behind one lock, and the
//! task that feeds it connections' traffic.
//!
//! Gathering tasks and spawns drive the same state directly, under the lock,
//! rather than by mail to the hall task: a dispersal is then decided in the
//! gathering's own wake-up (ask, verdict, departure) instead of two trips
//! through the hall task and a second wake-up of the gathering, which is
//! what limited how many gatherings could disperse per second. Everything
//! done under the lock is a map update or a non-blocking send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::tournament::Tournament;
use gathering_core::{
    ConnId, DisperseReason, Gathering, GatheringId, Hall, HallAction, HallEvent, Inbound,
    RejectReason, Verdict,
};

use crate::gathering_task::{self, Mail, Mailbox};
use crate::outbox::Outbox;
use crate::server::Shared;

/// Mail for the hall task: what connections (and `Running::touch`) send.
#[derive(Debug)]
pub enum HallMail {
    /// Traffic from a connection; a join carries the connection's outbox.
    Route(GatheringId, Inbound, Option<Outbox>),
    /// Begin a graceful shutdown.
    Shutdown,
}

/// What the hall knows, shared by the hall task, gathering tasks and spawns.
///
/// Lock it with [`Shared::hall_state`] and feed it with the methods below;
/// each carries out the core's actions before it returns, so the core's
/// order of actions is kept across everyone who drives it.
#[derive(Debug, Default)]
pub struct HallState {
    hall: Hall,
    mailboxes: HashMap<GatheringId, Mailbox>,
    /// Outboxes of joins the hall holds until it delivers them.
    pending: HashMap<ConnId, Outbox>,
    spawning: usize,
}

/// Runs the hall task until a shutdown has completed: every gathering dispersed.
pub async fn run(mailbox: async_channel::Receiver<HallMail>, shared: Arc<Shared>) {
    loop {
        let mail = tokio::select! {
            mail = mailbox.recv() => match mail {
                Ok(mail) => Some(mail),
                Err(_) => break,
            },
            // A gathering or spawn settled during shutdown: see whether all is done.
            () = shared.hall.settled.notified() => None,
        };
        let mut state = shared.hall_state();
        if let Some(mail) = mail {
            state.take(mail, &shared);
        }
        if state.finished() {
            break;
        }
    }
}

impl Shared {
    /// The hall's state, locked. Never hold it across an await.
    pub fn hall_state(&self) -> MutexGuard<'_, HallState> {
        // Every change under the lock leaves the maps consistent, so a
        // panic elsewhere while it was held does not make them unusable.
        self.hall
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hall's handles in [`Shared`].
#[derive(Debug)]
pub struct HallHandles {
    /// The hall task's mailbox for connections' traffic: bounded, so that
    /// readers feel backpressure.
    pub mailbox: async_channel::Sender<HallMail>,
    /// The state, see [`HallState`].
    pub state: Mutex<HallState>,
    /// Tells the hall task that a shutdown may have completed.
    pub settled: tokio::sync::Notify,
}

impl HallHandles {
    /// Handles around an empty hall; `mailbox` feeds the hall task.
    pub fn new(mailbox: async_channel::Sender<HallMail>) -> Self {
        HallHandles {
            mailbox,
            state: Mutex::default(),
            settled: tokio::sync::Notify::new(),
        }
    }
}

impl HallState {
    /// Whether a shutdown has completed.
    fn finished(&self) -> bool {
        self.hall.is_shutting_down() && self.hall.is_empty() && self.spawning == 0
    }

    /// Feeds mail from a connection.
    pub fn take(&mut self, mail: HallMail, shared: &Arc<Shared>) {
        match mail {
            HallMail::Route(id, inbound, outbox) => self.route(id, inbound, outbox, shared),
            HallMail::Shutdown => {
                tracing::info!(
                    gatherings = self.mailboxes.len(),
                    "shutting down: dispersing every gathering"
                );
                self.hall.handle(HallEvent::Shutdown);
                let mut ids: Vec<&GatheringId> = self.mailboxes.keys().collect();
                ids.sort();
                for id in ids {
                    if let Some(mailbox) = self.mailboxes.get(id) {
                        let _ = mailbox.unbounded_send(Mail::Shutdown);
                    }
                }
                self.carry_out(shared);
            }
        }
    }

    /// Routes traffic for gathering `id`; a join carries its outbox.
    pub fn route(
        &mut self,
        id: GatheringId,
        inbound: Inbound,
        outbox: Option<Outbox>,
        shared: &Arc<Shared>,
    ) {
        if let (Inbound::Join { conn, .. }, Some(outbox)) = (&inbound, outbox) {
            self.pending.insert(*conn, outbox);
        }
        self.hall.handle(HallEvent::Route(id, inbound));
        self.carry_out(shared);
    }

    /// Gathering `id`, having processed `processed` messages, asks to
    /// disperse; the hall's verdict.
    pub fn request_dispersal(
        &mut self,
        id: GatheringId,
        processed: u64,
        reason: DisperseReason,
        shared: &Arc<Shared>,
    ) -> Verdict {
        tracing::debug!(id = %id, reason = %reason, processed, "dispersal requested");
        self.hall.handle(HallEvent::DisperseRequest {
            id: id.clone(),
            processed,
        });
        let mut verdict = None;
        while let Some(action) = self.hall.poll_action() {
            match action {
                HallAction::Verdict(to, v) if to == id => verdict = Some(v),
                action => self.carry_out_one(action, shared),
            }
        }
        // The core answers every request; were it not to, staying live is
        // the answer that cannot lose anything (the gathering asks again).
        verdict.unwrap_or(Verdict::Refused)
    }

    /// Gathering `id` has dispersed and its task is ending; `leftover` is
    /// mail it did not process, which goes to its successor in order.
    pub fn dispersed(
        &mut self,
        id: GatheringId,
        leftover: Vec<(Inbound, Option<Outbox>)>,
        shared: &Arc<Shared>,
    ) {
        for (inbound, outbox) in leftover {
            self.route(id.clone(), inbound, outbox, shared);
        }
        self.mailboxes.remove(&id);
        self.hall.handle(HallEvent::Dispersed(id));
        self.carry_out(shared);
        self.settle(shared);
    }

    /// A spawn finished: the gathering's mailbox, or why it failed.
    fn spawned(&mut self, id: GatheringId, result: Result<Mailbox, String>, shared: &Arc<Shared>) {
        self.spawning = self.spawning.saturating_sub(1);
        match result {
            Ok(mailbox) => {
                if self.hall.is_shutting_down() {
                    let _ = mailbox.unbounded_send(Mail::Shutdown);
                }
                self.mailboxes.insert(id.clone(), mailbox);
                self.hall.handle(HallEvent::Spawned(id));
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "gathering could not be spawned");
                self.hall.handle(HallEvent::SpawnFailed(id));
            }
        }
        self.carry_out(shared);
        self.settle(shared);
    }

    /// During a shutdown, lets the hall task see whether it is complete.
    fn settle(&self, shared: &Arc<Shared>) {
        if self.finished() {
            shared.hall.settled.notify_one();
        }
    }

    fn carry_out(&mut self, shared: &Arc<Shared>) {
        while let Some(action) = self.hall.poll_action() {
            self.carry_out_one(action, shared);
        }
    }

    fn carry_out_one(&mut self, action: HallAction, shared: &Arc<Shared>) {
        match action {
            HallAction::Spawn(id) => {
                self.spawning += 1;
                let shared = shared.clone();
                tokio::spawn(async move {
                    let result = spawn(&id, &shared).await;
                    shared.hall_state().spawned(id, result, &shared);
                });
            }
            HallAction::Deliver(id, inbound) => {
                let outbox = match &inbound {
                    Inbound::Join { conn, .. } => self.pending.remove(conn),
                    _ => None,
                };
                let Some(mailbox) = self.mailboxes.get(&id) else {
                    tracing::error!(id = %id, "no mailbox for a live gathering; closing the connection");
                    if let Some(outbox) = outbox {
                        outbox.close(CLOSE_INTERNAL, "gathering unavailable");
                    }
                    return;
                };
                if let Err(e) = mailbox.unbounded_send(Mail::Inbound(inbound, outbox)) {
                    tracing::error!(id = %id, "gathering mailbox closed while live");
                    if let Mail::Inbound(_, Some(outbox)) = e.into_inner() {
                        outbox.close(CLOSE_INTERNAL, "gathering unavailable");
                    }
                }
            }
            HallAction::Verdict(id, verdict) => {
                // `request_dispersal` takes the answer to its own request;
                // any other verdict the core gives goes by mail, as before.
                if let Some(mailbox) = self.mailboxes.get(&id) {
                    let _ = mailbox.unbounded_send(Mail::Verdict(verdict));
                }
            }
            HallAction::Reject(_, inbound, reason) => {
                if let Some(outbox) = self.pending.remove(&inbound.conn()) {
                    match reason {
                        RejectReason::ShuttingDown => {
                            outbox.close(CLOSE_GOING_AWAY, "server shutting down")
                        }
                        RejectReason::SpawnFailed => {
                            outbox.close(CLOSE_INTERNAL, "gathering could not be loaded")
                        }
                    }
                }
            }
        }
    }
}

/// Loads gathering `id` from storage and starts its task.
async fn spawn(id: &GatheringId, shared: &Arc<Shared>) -> Result<Mailbox, String> {
    let store = shared.store.clone();
    let key = id.clone();
    let loaded = tokio::task::spawn_blocking(move || store.load(&key))
        .await
        .map_err(|e| format!("storage task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let now = shared.clock.now();
    let config = shared.config.gathering.clone();
    let gathering: Gathering<Tournament> = match loaded {
        Some(stored) => Gathering::restore(id.clone(), config, now, stored.seq, &stored.snapshot)
            .map_err(|e| e.to_string())?,
        None => Gathering::new(id.clone(), config, now),
    };
    tracing::info!(id = %id, seq = gathering.seq(), "gathering spawned");
    Ok(gathering_task::spawn(gathering, shared))
}
