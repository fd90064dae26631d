//! The hall's task: the core [`Hall`] over a mailbox, spawning gathering
//! tasks and holding the connections of joins until a gathering takes them.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::tournament::Tournament;
use gathering_core::{
    ConnId, Gathering, GatheringId, Hall, HallAction, HallEvent, Inbound, RejectReason,
};

use crate::gathering_task::{self, Mail};
use crate::peer::Peer;
use crate::shared::Shared;

/// Mail for the hall task.
#[derive(Debug)]
pub enum HallMail {
    /// Traffic from a connection; a join carries the connection.
    Route(GatheringId, Inbound, Option<Rc<Peer>>),
    /// A spawn finished: the gathering's mailbox, or why it failed.
    Spawned(GatheringId, Result<async_channel::Sender<Mail>, String>),
    /// A gathering asks to disperse.
    DisperseRequest {
        /// The gathering.
        id: GatheringId,
        /// Messages it has processed.
        processed: u64,
    },
    /// A gathering has dispersed and its task ended.
    Dispersed(GatheringId),
    /// Disperse everything and stop.
    Shutdown,
}

struct HallTask {
    hall: Hall,
    shared: Rc<Shared>,
    mailboxes: BTreeMap<GatheringId, async_channel::Sender<Mail>>,
    /// Connections of joins the hall holds until it delivers them.
    pending: HashMap<ConnId, Rc<Peer>>,
    spawning: usize,
}

/// Runs the hall until a shutdown has completed (every gathering dispersed);
/// `stopped` is dropped then, which is how the host learns of it.
pub async fn run(
    mailbox: async_channel::Receiver<HallMail>,
    shared: Rc<Shared>,
    stopped: async_channel::Sender<()>,
) {
    let mut task = HallTask {
        hall: Hall::new(),
        shared,
        mailboxes: BTreeMap::new(),
        pending: HashMap::new(),
        spawning: 0,
    };
    while let Ok(mail) = mailbox.recv().await {
        task.handle(mail);
        while let Some(action) = task.hall.poll_action() {
            task.carry_out(action);
        }
        if task.hall.is_shutting_down() && task.hall.is_empty() && task.spawning == 0 {
            break;
        }
    }
    // New joins now fail at once with a clear error.
    mailbox.close();
    drop(stopped);
}

impl HallTask {
    fn handle(&mut self, mail: HallMail) {
        match mail {
            HallMail::Route(id, inbound, peer) => {
                if let (Inbound::Join { conn, .. }, Some(peer)) = (&inbound, peer) {
                    self.pending.insert(*conn, peer);
                }
                self.hall.handle(HallEvent::Route(id, inbound));
            }
            HallMail::Spawned(id, result) => {
                self.spawning = self.spawning.saturating_sub(1);
                match result {
                    Ok(mailbox) => {
                        if self.hall.is_shutting_down() {
                            let _ = mailbox.try_send(Mail::Shutdown);
                        }
                        self.mailboxes.insert(id.clone(), mailbox);
                        self.hall.handle(HallEvent::Spawned(id));
                    }
                    Err(e) => {
                        web_sys::console::error_1(
                            &format!("gathering {id} could not be loaded: {e}").into(),
                        );
                        self.hall.handle(HallEvent::SpawnFailed(id));
                    }
                }
            }
            HallMail::DisperseRequest { id, processed } => {
                self.hall
                    .handle(HallEvent::DisperseRequest { id, processed });
            }
            HallMail::Dispersed(id) => {
                self.mailboxes.remove(&id);
                self.hall.handle(HallEvent::Dispersed(id));
            }
            HallMail::Shutdown => {
                self.hall.handle(HallEvent::Shutdown);
                for mailbox in self.mailboxes.values() {
                    let _ = mailbox.try_send(Mail::Shutdown);
                }
            }
        }
    }

    fn carry_out(&mut self, action: HallAction) {
        match action {
            HallAction::Spawn(id) => {
                self.spawning += 1;
                let shared = self.shared.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    let result = spawn(&id, &shared).await;
                    let _ = shared.hall.send(HallMail::Spawned(id, result)).await;
                });
            }
            HallAction::Deliver(id, inbound) => {
                let peer = match &inbound {
                    Inbound::Join { conn, .. } => self.pending.remove(conn),
                    _ => None,
                };
                let delivered = match self.mailboxes.get(&id) {
                    Some(mailbox) => mailbox.try_send(Mail::Inbound(inbound, peer)).map_err(|e| {
                        match e.into_inner() {
                            Mail::Inbound(_, peer) => peer,
                            _ => None,
                        }
                    }),
                    None => Err(peer),
                };
                // Not expected (the hall delivers only to live gatherings),
                // but a connection must never hang: close it.
                if let Err(Some(peer)) = delivered {
                    peer.close(CLOSE_INTERNAL, "gathering unavailable");
                }
            }
            HallAction::Verdict(id, verdict) => {
                if let Some(mailbox) = self.mailboxes.get(&id) {
                    let _ = mailbox.try_send(Mail::Verdict(verdict));
                }
            }
            HallAction::Reject(_, inbound, reason) => {
                if let Some(peer) = self.pending.remove(&inbound.conn()) {
                    match reason {
                        RejectReason::ShuttingDown => {
                            peer.close(CLOSE_GOING_AWAY, "host shutting down")
                        }
                        RejectReason::SpawnFailed => {
                            peer.close(CLOSE_INTERNAL, "gathering could not be loaded")
                        }
                    };
                }
            }
        }
    }
}

/// Loads gathering `id` from storage and starts its task.
async fn spawn(
    id: &GatheringId,
    shared: &Rc<Shared>,
) -> Result<async_channel::Sender<Mail>, String> {
    let loaded = shared.storage.load(id).await.map_err(|e| e.to_string())?;
    let now = shared.clock.now();
    let config = shared.config.clone();
    let gathering: Gathering<Tournament> = match loaded {
        Some(stored) => Gathering::restore(id.clone(), config, now, stored.seq, &stored.snapshot)
            .map_err(|e| e.to_string())?,
        None => Gathering::new(id.clone(), config, now),
    };
    Ok(gathering_task::spawn(gathering, shared))
}
