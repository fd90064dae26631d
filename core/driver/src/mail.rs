//! What travels between connections, the hall, gatherings and storage.

use gathering_core::{GatheringId, Inbound, Verdict};

/// The sending end of a gathering's mailbox: unbounded (the hall must never
/// wait on one gathering) and empty-cheap (most gatherings are idle).
pub type Mailbox<C> = futures_channel::mpsc::UnboundedSender<Mail<C>>;

/// Mail for a gathering's task, in the order it must be handled. `C` is the
/// host's connection handle.
#[derive(Debug)]
pub enum Mail<C> {
    /// Routed by the hall; a join carries the connection's handle.
    Inbound(Inbound, Option<C>),
    /// The hall's answer to a dispersal request asked by mail.
    Verdict(Verdict),
    /// The commit of op `seq` is durable.
    Persisted(u64),
    /// The last commit could not be written.
    PersistFailed(String),
    /// The host is shutting down.
    Shutdown,
    /// The host wants room: disperse early if nothing is on its way.
    Evict,
    /// The host hands the gathering to another node: disperse with reason
    /// `moved` once the hall agrees.
    Handoff,
    /// The last commit was refused: another node owns the gathering now.
    Fenced(String),
}

/// Mail for the hall's task: what connections send.
#[derive(Debug)]
pub enum HallMail<C> {
    /// Traffic from a connection for gathering `id`; a join carries the
    /// connection's handle (none for a join with nobody to write to).
    Route(GatheringId, Inbound, Option<C>),
    /// Begin a graceful shutdown: every gathering disperses with reason
    /// `shutdown`, and the hall's task ends once all have.
    Shutdown,
    /// Hand gathering `id`, if live, to another node: it disperses with
    /// reason `moved` (a cluster's drain, or a lost lease).
    Handoff(GatheringId),
}

/// The answer a storage write owes its gathering: report it once.
#[derive(Debug)]
pub struct Durable<C> {
    seq: u64,
    reply: Mailbox<C>,
}

impl<C> Durable<C> {
    pub(crate) fn new(seq: u64, reply: Mailbox<C>) -> Self {
        Durable { seq, reply }
    }

    /// The op number the write makes durable.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Tells the gathering how the write went. A gathering that is gone
    /// needs no answer.
    pub fn report(self, result: Result<(), String>) {
        let mail = match result {
            Ok(()) => Mail::Persisted(self.seq),
            Err(e) => Mail::PersistFailed(e),
        };
        let _ = self.reply.unbounded_send(mail);
    }

    /// Tells the gathering its write was refused because another node
    /// claimed it (`why` says which): it disperses with reason `moved`.
    pub fn fenced(self, why: String) {
        let _ = self.reply.unbounded_send(Mail::Fenced(why));
    }
}

/// The gatherings a write failed for, so that none of their later commits
/// is written: what a host whose gatherings overlap their commits owes them
/// ([`gathering_core::Action::Persist`]). A gathering is remembered until
/// it is gone; its successor, loaded from the store, is another gathering.
#[derive(Debug)]
pub struct FailedWrites<C> {
    /// The failed gatherings' mailboxes, which say who a write answers and
    /// whether that gathering is still there; almost always empty.
    failed: Vec<Mailbox<C>>,
}

impl<C> Default for FailedWrites<C> {
    fn default() -> Self {
        FailedWrites { failed: Vec::new() }
    }
}

impl<C> FailedWrites<C> {
    /// Answers `durable` with `error`, and remembers its gathering.
    pub fn fail(&mut self, durable: Durable<C>, error: String) {
        self.remember(&durable);
        durable.report(Err(error));
    }

    /// Answers `durable` as fenced ([`Durable::fenced`]), and remembers
    /// its gathering.
    pub fn fence(&mut self, durable: Durable<C>, why: String) {
        self.remember(&durable);
        durable.fenced(why);
    }

    fn remember(&mut self, durable: &Durable<C>) {
        if !self.failed.iter().any(|m| m.same_receiver(&durable.reply)) {
            self.failed.push(durable.reply.clone());
        }
    }

    /// Whether `durable`'s gathering had a write fail: then its commit must
    /// not be written, and is answered as failed instead. So too when the
    /// gathering is gone: one leaves only once everything it handed over is
    /// durable, unless a write of it failed, so a write still waiting then
    /// follows a failure (and nobody was told its ops were kept).
    pub fn follows_failure(&mut self, durable: &Durable<C>) -> bool {
        if durable.reply.is_closed() {
            return true;
        }
        if self.failed.is_empty() {
            return false;
        }
        // A gathering gone is caught above; forgetting it keeps this short.
        self.failed.retain(|m| !m.is_closed());
        self.failed.iter().any(|m| m.same_receiver(&durable.reply))
    }
}
