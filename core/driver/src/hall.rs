//! The hall of one host: the core [`Hall`] with the mailboxes of live
//! gatherings and the handles of joins it holds, behind the host's lock,
//! and the task that feeds it connections' traffic.
//!
//! Gathering tasks and loads drive the same state directly, under the lock,
//! rather than by mail to the hall's task: a dispersal is then decided in
//! the gathering's own wake-up (ask, verdict, departure) instead of two trips
//! through the hall's task and a second wake-up of the gathering, which is
//! what limited how many gatherings could disperse per second. Everything
//! done under the lock is a map update, a non-blocking send, or starting a
//! load.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::{Either, select};
use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_INTERNAL};
use gathering_core::{
    ConnId, Gathering, GatheringId, Hall, HallAction, HallEvent, Inbound, Loaded, RejectReason,
    Verdict,
};

use crate::gathering_task;
use crate::mail::{HallMail, Mail, Mailbox};
use crate::runtime::{Conn, Observed, Runtime};
use crate::status::Status;

/// What the hall knows, shared by the hall's task, gathering tasks and
/// loads; the host keeps it behind its lock ([`Runtime::hall`]).
///
/// Each method carries out the core's actions before it returns, so the
/// core's order of actions is kept across everyone who drives it.
pub struct HallState<R: Runtime> {
    hall: Hall,
    mailboxes: HashMap<GatheringId, Mailbox<R::Conn>>,
    /// Handles of joins the hall holds until it delivers them.
    pending: HashMap<ConnId, R::Conn>,
    /// What each live gathering publishes, kept only under a bound on live
    /// gatherings (`Config::max_gatherings`), to find the least recently
    /// active; one that was asked to make room leaves it.
    activity: HashMap<GatheringId, Arc<Status>>,
    loading: usize,
    /// Tells the hall's task that a shutdown may have completed.
    settled: async_channel::Sender<()>,
}

impl<R: Runtime> std::fmt::Debug for HallState<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HallState")
            .field("hall", &self.hall)
            .field("mailboxes", &self.mailboxes.len())
            .field("pending", &self.pending.len())
            .field("loading", &self.loading)
            .finish()
    }
}

/// The receiving end of a hall's settle signal, for [`hall_task`].
#[derive(Debug)]
pub struct Settled(async_channel::Receiver<()>);

impl<R: Runtime> HallState<R> {
    /// An empty hall, and the signal its task waits on besides its mailbox.
    pub fn new() -> (Self, Settled) {
        let (settled, rx) = async_channel::bounded(1);
        let state = HallState {
            hall: Hall::new(),
            mailboxes: HashMap::new(),
            activity: HashMap::new(),
            pending: HashMap::new(),
            loading: 0,
            settled,
        };
        (state, Settled(rx))
    }

    /// Gatherings live or being loaded.
    pub fn live(&self) -> usize {
        self.hall.live()
    }

    /// Whether a shutdown has completed: every gathering dispersed.
    pub fn finished(&self) -> bool {
        self.hall.is_shutting_down() && self.hall.is_empty() && self.loading == 0
    }

    /// Feeds mail from a connection.
    pub fn take(&mut self, mail: HallMail<R::Conn>, rt: &R) {
        match mail {
            HallMail::Route(id, inbound, conn) => self.route(id, inbound, conn, rt),
            HallMail::Shutdown => {
                rt.observe(Observed::ShuttingDown {
                    gatherings: self.mailboxes.len(),
                });
                self.hall.handle(HallEvent::Shutdown);
                // Sorted so that what happens does not depend on hash order.
                let mut ids: Vec<&GatheringId> = self.mailboxes.keys().collect();
                ids.sort();
                for id in ids {
                    if let Some(mailbox) = self.mailboxes.get(id) {
                        let _ = mailbox.unbounded_send(Mail::Shutdown);
                    }
                }
                self.carry_out(rt);
                self.settle();
            }
            HallMail::Handoff(id) => {
                if let Some(mailbox) = self.mailboxes.get(&id) {
                    let _ = mailbox.unbounded_send(Mail::Handoff);
                }
            }
        }
    }

    /// Routes traffic for gathering `id`; a join carries its handle.
    pub fn route(&mut self, id: GatheringId, inbound: Inbound, conn: Option<R::Conn>, rt: &R) {
        if let (Inbound::Join { conn: c, .. }, Some(conn)) = (&inbound, conn) {
            self.pending.insert(*c, conn);
        }
        self.hall.handle(HallEvent::Route(id, inbound));
        self.carry_out(rt);
    }

    /// Gathering `id`, having processed `processed` messages, asks to
    /// disperse; the hall's verdict.
    pub(crate) fn request_dispersal(&mut self, id: GatheringId, processed: u64, rt: &R) -> Verdict {
        self.hall.handle(HallEvent::DisperseRequest {
            id: id.clone(),
            processed,
        });
        let mut verdict = None;
        while let Some(action) = self.hall.poll_action() {
            match action {
                HallAction::Verdict(to, v) if to == id => verdict = Some(v),
                action => self.carry_out_one(action, rt),
            }
        }
        // The core answers every request; were it not to, staying live is
        // the answer that cannot lose anything (the gathering asks again).
        verdict.unwrap_or(Verdict::Refused)
    }

    /// Gathering `id` has dispersed and its task is ending; `leftover` is
    /// mail it did not process, which goes to its successor in order.
    pub(crate) fn dispersed(
        &mut self,
        id: GatheringId,
        leftover: Vec<(Inbound, Option<R::Conn>)>,
        rt: &R,
    ) {
        for (inbound, conn) in leftover {
            self.route(id.clone(), inbound, conn, rt);
        }
        self.mailboxes.remove(&id);
        self.activity.remove(&id);
        self.hall.handle(HallEvent::Dispersed(id));
        self.carry_out(rt);
        self.settle();
    }

    /// A load finished: the gathering's mailbox, or why it failed.
    fn spawned(
        &mut self,
        id: GatheringId,
        result: Result<(Mailbox<R::Conn>, Arc<Status>), String>,
        rt: &R,
    ) {
        self.loading = self.loading.saturating_sub(1);
        match result {
            Ok((mailbox, status)) => {
                if self.hall.is_shutting_down() {
                    let _ = mailbox.unbounded_send(Mail::Shutdown);
                }
                if rt.config().max_gatherings != u32::MAX {
                    self.activity.insert(id.clone(), status);
                }
                self.mailboxes.insert(id.clone(), mailbox);
                self.hall.handle(HallEvent::Spawned(id));
            }
            Err(error) => {
                rt.observe(Observed::SpawnFailed {
                    id: &id,
                    error: &error,
                });
                self.hall.handle(HallEvent::SpawnFailed(id));
            }
        }
        self.carry_out(rt);
        self.settle();
    }

    /// During a shutdown, lets the hall's task see whether it is complete.
    fn settle(&self) {
        if self.finished() {
            let _ = self.settled.try_send(());
        }
    }

    /// At the bound on live gatherings, asks the least recently active to
    /// disperse (it agrees with the hall first, as an idle one does), so
    /// that the one about to spawn has room. Ties go to the smallest id:
    /// what happens does not depend on hash order.
    fn make_room(&mut self, rt: &R) {
        let bound = rt.config().max_gatherings;
        if bound == u32::MAX || self.mailboxes.len() + self.loading < bound as usize {
            return;
        }
        let oldest = self
            .activity
            .iter()
            .min_by(|(a, x), (b, y)| (x.last_activity(), *a).cmp(&(y.last_activity(), *b)))
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.activity.remove(&id);
            if let Some(mailbox) = self.mailboxes.get(&id) {
                let _ = mailbox.unbounded_send(Mail::Evict);
            }
        }
    }

    fn carry_out(&mut self, rt: &R) {
        while let Some(action) = self.hall.poll_action() {
            self.carry_out_one(action, rt);
        }
    }

    fn carry_out_one(&mut self, action: HallAction, rt: &R) {
        match action {
            HallAction::Spawn(id) => {
                self.make_room(rt);
                self.loading += 1;
                rt.load(Loading { id, rt: rt.clone() });
            }
            HallAction::Deliver(id, inbound) => {
                let conn = match &inbound {
                    Inbound::Join { conn, .. } => self.pending.remove(conn),
                    _ => None,
                };
                let undelivered = match self.mailboxes.get(&id) {
                    Some(mailbox) => match mailbox.unbounded_send(Mail::Inbound(inbound, conn)) {
                        Ok(()) => return,
                        Err(e) => match e.into_inner() {
                            Mail::Inbound(_, conn) => conn,
                            _ => None,
                        },
                    },
                    None => conn,
                };
                // Not expected (the hall delivers only to live gatherings),
                // but a connection must never hang: close it.
                rt.observe(Observed::Unavailable { id: &id });
                if let Some(conn) = undelivered {
                    conn.close(CLOSE_INTERNAL, "gathering unavailable");
                }
            }
            HallAction::Verdict(id, verdict) => {
                // `request_dispersal` takes the answer to its own request;
                // any other verdict the core gives goes by mail.
                if let Some(mailbox) = self.mailboxes.get(&id) {
                    let _ = mailbox.unbounded_send(Mail::Verdict(verdict));
                }
            }
            HallAction::Reject(_, inbound, reason) => {
                if let Some(conn) = self.pending.remove(&inbound.conn()) {
                    match reason {
                        RejectReason::ShuttingDown => {
                            conn.close(CLOSE_GOING_AWAY, "server shutting down")
                        }
                        RejectReason::SpawnFailed => {
                            conn.close(CLOSE_INTERNAL, "gathering could not be loaded")
                        }
                    }
                }
            }
        }
    }
}

/// A load finished: builds the gathering from what was stored, hands its
/// task to the host and its mailbox to the hall.
pub(crate) fn loaded<R: Runtime>(rt: R, id: GatheringId, loaded: Result<Loaded, String>) {
    let now = rt.now();
    let config = rt.config().clone();
    let gathering = loaded.and_then(|loaded| {
        let mut gathering = Gathering::<R::App>::restore(id.clone(), config, now, &loaded)
            .map_err(|e| e.to_string())?;
        gathering.offer_epoch(rt.fresh_epoch());
        Ok(gathering)
    });
    let mailbox = gathering.map(|gathering| {
        let (task, mailbox, status) = gathering_task::new(gathering, &rt);
        rt.spawn(task);
        (mailbox, status)
    });
    rt.hall().spawned(id, mailbox, &rt);
}

/// The hall's task: feeds connections' mail to the hall until a shutdown
/// has completed (every gathering dispersed), then closes its mailbox so
/// that later sends fail at once.
pub async fn hall_task<R: Runtime>(
    rt: R,
    mailbox: async_channel::Receiver<HallMail<R::Conn>>,
    settled: Settled,
) {
    {
        loop {
            let mail = {
                let next = std::pin::pin!(mailbox.recv());
                let settle = std::pin::pin!(settled.0.recv());
                match select(next, settle).await {
                    Either::Left((Ok(mail), _)) => Some(mail),
                    Either::Left((Err(_), _)) => break,
                    // A gathering or load settled during shutdown.
                    Either::Right(_) => None,
                }
            };
            let mut hall = rt.hall();
            if let Some(mail) = mail {
                hall.take(mail, &rt);
            }
            if hall.finished() {
                break;
            }
        }
        mailbox.close();
    }
}

/// A load the hall asked for: report its outcome once with
/// [`Loading::finish`], which starts the gathering.
pub struct Loading<R: Runtime> {
    pub(crate) id: GatheringId,
    pub(crate) rt: R,
}

impl<R: Runtime> std::fmt::Debug for Loading<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loading").field("id", &self.id).finish()
    }
}

impl<R: Runtime> Loading<R> {
    /// The gathering to load.
    pub fn id(&self) -> &GatheringId {
        &self.id
    }

    /// Hands what the store holds of the gathering (`Loaded::default()`:
    /// never persisted) or the reason the load failed to the hall; a loaded
    /// gathering starts at once.
    pub fn finish(self, outcome: Result<Loaded, String>) {
        loaded(self.rt, self.id, outcome);
    }
}
