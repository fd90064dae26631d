//! The hall's task: the core [`Hall`] over a mailbox, spawning gathering tasks
//! and keeping the outboxes of joins until a gathering takes them.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;

use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::tournament::Tournament;
use gathering_core::{
    ConnId, DisperseReason, Gathering, GatheringId, Hall, HallAction, HallEvent, Inbound,
    RejectReason,
};

use crate::gathering_task::{self, Mail, Mailbox};
use crate::outbox::Outbox;
use crate::server::Shared;

/// Mail for the hall task.
#[derive(Debug)]
pub enum HallMail {
    /// Traffic from a connection; a join carries the connection's outbox.
    Route(GatheringId, Inbound, Option<Outbox>),
    /// A spawn finished: the gathering's mailbox, or why it failed.
    Spawned(GatheringId, Result<Mailbox, String>),
    /// A gathering asks to disperse.
    DisperseRequest {
        /// The gathering.
        id: GatheringId,
        /// Messages it has processed.
        processed: u64,
        /// Why (for logs).
        reason: DisperseReason,
    },
    /// A gathering has dispersed and its task ended.
    Dispersed(GatheringId),
    /// Begin a graceful shutdown.
    Shutdown,
}

struct HallTask {
    hall: Hall,
    shared: Arc<Shared>,
    mailboxes: HashMap<GatheringId, Mailbox>,
    /// Outboxes of joins the hall holds until it delivers them.
    pending: HashMap<ConnId, Outbox>,
    spawning: usize,
}

/// Runs the hall until a shutdown has completed: every gathering dispersed.
pub async fn run(
    mailbox: async_channel::Receiver<HallMail>,
    mut control: futures_channel::mpsc::UnboundedReceiver<HallMail>,
    shared: Arc<Shared>,
) {
    let mut task = HallTask {
        hall: Hall::new(),
        shared,
        mailboxes: HashMap::new(),
        pending: HashMap::new(),
        spawning: 0,
    };
    loop {
        // Gatherings and spawns first: their mail frees or settles state
        // that client traffic may be waiting on.
        let mail = tokio::select! {
            biased;
            Some(mail) = control.next() => mail,
            Ok(mail) = mailbox.recv() => mail,
            else => break,
        };
        task.handle(mail);
        while let Some(action) = task.hall.poll_action() {
            task.carry_out(action);
        }
        if task.hall.is_shutting_down() && task.hall.is_empty() && task.spawning == 0 {
            break;
        }
    }
}

impl HallTask {
    fn handle(&mut self, mail: HallMail) {
        match mail {
            HallMail::Route(id, inbound, outbox) => {
                if let (Inbound::Join { conn, .. }, Some(outbox)) = (&inbound, outbox) {
                    self.pending.insert(*conn, outbox);
                }
                self.hall.handle(HallEvent::Route(id, inbound));
            }
            HallMail::Spawned(id, result) => {
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
            }
            HallMail::DisperseRequest {
                id,
                processed,
                reason,
            } => {
                tracing::debug!(id = %id, reason = %reason, processed, "dispersal requested");
                self.hall
                    .handle(HallEvent::DisperseRequest { id, processed });
            }
            HallMail::Dispersed(id) => {
                self.mailboxes.remove(&id);
                self.hall.handle(HallEvent::Dispersed(id));
            }
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
            }
        }
    }

    fn carry_out(&mut self, action: HallAction) {
        match action {
            HallAction::Spawn(id) => {
                self.spawning += 1;
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = spawn(&id, &shared).await;
                    let _ = shared.control.unbounded_send(HallMail::Spawned(id, result));
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
