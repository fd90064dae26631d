//! The hall: routes traffic to gatherings, spawns them, and agrees to their dispersal.

use std::collections::{HashMap, VecDeque};

use crate::GatheringId;
use crate::events::{Inbound, Verdict};

/// An input to the [`Hall`].
#[derive(Clone, Debug, PartialEq)]
pub enum HallEvent {
    /// A connection's join, frame or departure for gathering `id`.
    Route(GatheringId, Inbound),
    /// The host finished spawning `id` (state loaded); it can take traffic.
    Spawned(GatheringId),
    /// The host could not spawn `id` (e.g. storage unreadable).
    SpawnFailed(GatheringId),
    /// Gathering `id` asks to disperse, having processed `processed` messages.
    DisperseRequest {
        /// The gathering.
        id: GatheringId,
        /// Its count of processed messages (see `Action::Disperse`).
        processed: u64,
    },
    /// Gathering `id` persisted its final state and closed; it is gone.
    Dispersed(GatheringId),
    /// Stop accepting: route nothing new, spawn nothing new.
    Shutdown,
}

/// Why the hall turned traffic away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The gathering could not be loaded.
    SpawnFailed,
    /// The server is shutting down.
    ShuttingDown,
}

/// An output of the [`Hall`], drained with [`Hall::poll_action`].
#[derive(Clone, Debug, PartialEq)]
pub enum HallAction {
    /// Load gathering `id` from storage and start it; answer with
    /// [`HallEvent::Spawned`] or [`HallEvent::SpawnFailed`].
    Spawn(GatheringId),
    /// Hand `Inbound` to the live gathering `id`, in this order.
    Deliver(GatheringId, Inbound),
    /// Answer gathering `id`'s dispersal request.
    Verdict(GatheringId, Verdict),
    /// This traffic cannot be served; close its connection with a reason.
    Reject(GatheringId, Inbound, RejectReason),
}

/// The hall's view of one gathering.
#[derive(Debug)]
enum Entry {
    /// Being loaded; traffic waits here, in order.
    Spawning(Vec<Inbound>),
    /// Taking traffic; `routed` counts what was delivered to it.
    Live { routed: u64 },
    /// Dispersal granted, final persist under way; traffic waits here for
    /// the successor.
    Dispersing(Vec<Inbound>),
}

/// Routes connections and messages to gatherings by id, and takes part in
/// their dispersal.
///
/// # Driver contract
/// Feed inputs with [`Hall::handle`], drain [`Hall::poll_action`] after each,
/// and deliver each gathering's actions in the order given; the channel from
/// the hall to a gathering must be FIFO.
///
/// **No join, message or acknowledged op is lost in any interleaving**: the
/// hall grants a dispersal only when the gathering has processed everything
/// routed to it; from the grant on, traffic for that id is buffered, and after
/// the final persist ([`HallEvent::Dispersed`]) it goes to a successor loaded
/// from that persisted state. A gathering that is not live is a normal case:
/// traffic for it spawns one.
#[derive(Debug, Default)]
pub struct Hall {
    entries: HashMap<GatheringId, Entry>,
    actions: VecDeque<HallAction>,
    shutting_down: bool,
}

impl Hall {
    /// An empty hall.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of gatherings live or being spawned.
    pub fn live(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !matches!(e, Entry::Dispersing(_)))
            .count()
    }

    /// Number of gatherings the hall knows in any state; zero once a shutdown
    /// has completed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the hall knows no gathering at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is taking traffic directly.
    pub fn is_live(&self, id: &GatheringId) -> bool {
        matches!(self.entries.get(id), Some(Entry::Live { .. }))
    }

    /// Whether the hall knows `id` in any state (spawning, live, dispersing).
    pub fn knows(&self, id: &GatheringId) -> bool {
        self.entries.contains_key(id)
    }

    /// Whether [`HallEvent::Shutdown`] was received.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The next output, or `None`.
    pub fn poll_action(&mut self) -> Option<HallAction> {
        self.actions.pop_front()
    }

    /// Feeds one input. Drain [`Hall::poll_action`] afterwards.
    pub fn handle(&mut self, event: HallEvent) {
        match event {
            HallEvent::Route(id, inbound) => self.route(id, inbound),
            HallEvent::Spawned(id) => self.spawned(id),
            HallEvent::SpawnFailed(id) => {
                if let Some(Entry::Spawning(buffer)) = self.entries.remove(&id) {
                    self.reject_all(&id, buffer, RejectReason::SpawnFailed);
                }
            }
            HallEvent::DisperseRequest { id, processed } => self.disperse_request(id, processed),
            HallEvent::Dispersed(id) => self.dispersed(id),
            HallEvent::Shutdown => self.shutdown(),
        }
    }

    fn route(&mut self, id: GatheringId, inbound: Inbound) {
        match self.entries.get_mut(&id) {
            Some(Entry::Live { routed }) => {
                *routed += 1;
                self.actions.push_back(HallAction::Deliver(id, inbound));
            }
            _ if self.shutting_down => {
                self.reject_all(&id, vec![inbound], RejectReason::ShuttingDown)
            }
            // A departure of a connection whose join is not waiting here
            // belongs to the previous gathering (typically the socket that
            // dispersal itself closed): the successor never knew it, and
            // buffering it would respawn a gathering for nobody.
            Some(Entry::Spawning(buffer) | Entry::Dispersing(buffer))
                if matches!(inbound, Inbound::Leave { conn, .. }
                    if !buffer.iter().any(|b| matches!(b, Inbound::Join { conn: c, .. } if *c == conn))) =>
                {}
            Some(Entry::Spawning(buffer) | Entry::Dispersing(buffer)) => buffer.push(inbound),
            // A departure needs no gathering: there is nobody to tell.
            None if matches!(inbound, Inbound::Leave { .. }) => {}
            None => {
                self.entries
                    .insert(id.clone(), Entry::Spawning(vec![inbound]));
                self.actions.push_back(HallAction::Spawn(id));
            }
        }
    }

    fn spawned(&mut self, id: GatheringId) {
        let Some(Entry::Spawning(buffer)) = self.entries.get_mut(&id) else {
            return;
        };
        let buffer = std::mem::take(buffer);
        if self.shutting_down {
            // Its traffic was already turned away; the host shuts it down.
            self.entries.insert(id, Entry::Dispersing(Vec::new()));
            return;
        }
        self.entries.insert(
            id.clone(),
            Entry::Live {
                routed: buffer.len() as u64,
            },
        );
        self.actions.extend(
            buffer
                .into_iter()
                .map(|inbound| HallAction::Deliver(id.clone(), inbound)),
        );
    }

    fn disperse_request(&mut self, id: GatheringId, processed: u64) {
        let granted = match self.entries.get(&id) {
            Some(Entry::Live { routed }) => *routed <= processed,
            // Another instance is being loaded under this id: this request
            // is from a gathering the hall no longer routes to.
            Some(Entry::Spawning(_)) => false,
            // Already dispersing (a repeated request), or unknown, so nothing
            // is routed to it: granting is safe, later traffic waits.
            Some(Entry::Dispersing(_)) | None => true,
        };
        if granted && !matches!(self.entries.get(&id), Some(Entry::Dispersing(_))) {
            self.entries
                .insert(id.clone(), Entry::Dispersing(Vec::new()));
        }
        let verdict = if granted {
            Verdict::Granted
        } else {
            Verdict::Refused
        };
        self.actions.push_back(HallAction::Verdict(id, verdict));
    }

    fn dispersed(&mut self, id: GatheringId) {
        match self.entries.remove(&id) {
            Some(Entry::Dispersing(buffer)) if !buffer.is_empty() => {
                // The final persist is done: a successor loads it and takes
                // the traffic that waited, in order.
                self.entries.insert(id.clone(), Entry::Spawning(buffer));
                self.actions.push_back(HallAction::Spawn(id));
            }
            // A gathering closed by shutdown was never granted; it is gone all the same.
            Some(Entry::Dispersing(_) | Entry::Live { .. }) | None => {}
            Some(spawning @ Entry::Spawning(_)) => {
                self.entries.insert(id, spawning);
            }
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        // Sorted so that what the host sees does not depend on hash order.
        let mut ids: Vec<GatheringId> = self.entries.keys().cloned().collect();
        ids.sort();
        for id in ids {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            match entry {
                // Every live gathering is about to close: from now on its
                // traffic is turned away rather than delivered and bounced.
                Entry::Live { .. } => *entry = Entry::Dispersing(Vec::new()),
                Entry::Spawning(buffer) | Entry::Dispersing(buffer) => {
                    let buffer = std::mem::take(buffer);
                    self.reject_all(&id, buffer, RejectReason::ShuttingDown);
                }
            }
        }
    }

    fn reject_all(&mut self, id: &GatheringId, buffer: Vec<Inbound>, reason: RejectReason) {
        self.actions.extend(
            buffer
                .into_iter()
                .filter(|inbound| !matches!(inbound, Inbound::Leave { .. }))
                .map(|inbound| HallAction::Reject(id.clone(), inbound, reason)),
        );
    }
}
