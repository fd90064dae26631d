//! This node's lease: renewed every third of its length by one thread,
//! which also lets go of the gatherings that dispersed here.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use gathering_core::GatheringId;

use super::{Cluster, ClusterOptions, StoreError, connect, err, sql};

/// What the lease thread does besides renewing.
pub(crate) enum Task {
    /// Let gathering `id` go if this node still holds it at this epoch.
    Release(GatheringId, i64),
    /// Leave the cluster (after the releases before), then say so.
    Leave(std::sync::mpsc::Sender<()>),
}

/// Until when the lease surely holds, by this machine's monotonic clock:
/// from the moment a renewal was *sent*, which is no later than the
/// database's `now()` that dated it, less a margin for the two clocks'
/// rates.
pub(crate) struct Lease {
    length: Duration,
    until: Mutex<Option<Instant>>,
}

impl Lease {
    pub fn new(length: Duration) -> Self {
        Lease {
            length,
            until: Mutex::new(None),
        }
    }

    /// Whether the lease is known to hold now.
    pub fn holds(&self) -> bool {
        let until = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Renews the lease; returns whether it had run out before (by our
    /// count) — then other nodes may have claimed our gatherings.
    pub fn renew(
        &self,
        client: &mut postgres::Client,
        options: &ClusterOptions,
    ) -> Result<bool, StoreError> {
        let sent = Instant::now();
        let millis = i64::try_from(self.length.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(sql::RENEW, &[&options.node, &options.advertise, &millis])
            .map_err(|e| err("cannot renew this node's lease", e))?;
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        let lapsed = until.is_some_and(|until| sent >= until);
        *until = Some(sent + self.length - self.length / 10);
        Ok(lapsed)
    }
}

/// The lease thread: renews on time, makes releases in between, and ends
/// when the cluster is gone or has left.
pub(crate) fn run(
    cluster: &Weak<Cluster>,
    tasks: &Receiver<Task>,
    lost: &dyn Fn(Option<Vec<GatheringId>>),
) {
    let Some(options) = cluster.upgrade().map(|c| c.options.clone()) else {
        return;
    };
    let every = options.lease / 3;
    let mut client: Option<postgres::Client> = None;
    let mut next = Instant::now() + every;
    // Whether `lost` was called for the current loss of the lease, and
    // whether the last renewal failed.
    let mut let_go = false;
    let mut failing = false;
    loop {
        let task = match tasks.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(task) => Some(task),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        // Run out by this machine's count while renewals fail: other nodes
        // may claim this node's gatherings any moment, and clients still
        // here would miss what is committed there. Let every one go. (Run
        // out with no failed renewal, the process was paused: the renewal
        // below says so first, and meanwhile what its clients sent during
        // the pause reaches its gatherings, whose commits the fence
        // refuses if another node claimed them.)
        if !let_go && failing && !cluster.lease.holds() {
            let_go = true;
            tracing::error!("cluster lease lost: letting every gathering go");
            lost(None);
        }
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            client = connect(&options.url).ok();
        }
        let Some(db) = client.as_mut() else {
            failing = true;
            next = Instant::now() + every / 4;
            continue;
        };
        match task {
            Some(Task::Release(id, epoch)) => {
                let released = db.execute(
                    sql::RELEASE,
                    &[&cluster.app, &id.as_str(), &options.node, &epoch],
                );
                if let Err(e) = released {
                    // Not lost: the row frees itself when this node's
                    // lease runs out, or at its next claim here.
                    tracing::warn!(id = %id, error = %e, "gathering not released");
                }
            }
            Some(Task::Leave(done)) => {
                if let Err(e) = db.execute(sql::LEAVE, &[&options.node]) {
                    tracing::warn!(error = %e, "cluster lease not given up; it runs out by itself");
                }
                let _ = done.send(());
                return;
            }
            None => {}
        }
        if Instant::now() < next {
            continue;
        }
        match cluster.lease.renew(db, &options) {
            Ok(lapsed) => {
                next = Instant::now() + every;
                if lapsed && !let_go {
                    // Paused past the lease: others may have claimed some
                    // gatherings meanwhile, and no one can since the
                    // renewal. An empty commit through the fence says
                    // which; those go, the rest stay.
                    match cluster.fenced_since(db) {
                        Ok(fenced) => {
                            tracing::warn!(
                                fenced = fenced.len(),
                                "cluster lease renewed after it ran out: letting go of the gatherings claimed meanwhile"
                            );
                            lost(Some(fenced));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster lease renewed after it ran out: letting every gathering go");
                            lost(None);
                        }
                    }
                }
                let_go = false;
                failing = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster lease not renewed; retrying");
                failing = true;
                client = None;
                next = Instant::now() + every / 4;
            }
        }
    }
}
