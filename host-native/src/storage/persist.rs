//! Group commit: every gathering's commit waiting when the writer is free
//! goes into one durable transaction, so throughput does not collapse to
//! one fsync per op.

use std::sync::Arc;
use std::thread::JoinHandle;

use gathering_driver::Durable;

use crate::front::outbox::Outbox;
use crate::metrics::Metrics;
use crate::storage::{Store, Write};

/// Most gatherings' commits in one transaction; bounds the latency of the
/// first in a batch.
const MAX_BATCH: usize = 4096;

struct Job {
    write: Write,
    durable: Durable<Outbox>,
}

/// Handle to the writer thread. Dropping every handle lets the thread finish
/// the jobs it has and exit.
#[derive(Clone)]
pub(crate) struct Persister {
    jobs: async_channel::Sender<Job>,
}

impl Persister {
    /// Starts the writer thread over `store`.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, rx) = async_channel::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name("gathering-store".into())
            .spawn(move || write_loop(&*store, &rx, &metrics))?;
        Ok((Persister { jobs }, thread))
    }

    /// Queues `write`; its outcome is reported through `durable`.
    pub fn submit(&self, write: Write, durable: Durable<Outbox>) {
        if let Err(e) = self.jobs.try_send(Job { write, durable }) {
            e.into_inner()
                .durable
                .report(Err("the storage writer has stopped".into()));
        }
    }
}

fn write_loop(store: &dyn Store, rx: &async_channel::Receiver<Job>, metrics: &Metrics) {
    while let Ok(first) = rx.recv_blocking() {
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            replies.push(job.durable);
            writes.push(job.write);
            if writes.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let result = store.commit(&writes);
        metrics.storage_commits.inc();
        metrics.storage_writes.inc_by(writes.len() as u64);
        let bytes: usize = writes.iter().map(|w| w.commit.bytes()).sum();
        metrics.storage_bytes.inc_by(bytes as u64);
        let ops: usize = writes.iter().map(|w| w.commit.log.len()).sum();
        metrics.storage_logged.inc_by(ops as u64);
        let snapshots = writes
            .iter()
            .filter(|w| w.commit.snapshot.is_some())
            .count();
        metrics.storage_snapshots.inc_by(snapshots as u64);
        if let Err(e) = &result {
            metrics.storage_failures.inc();
            tracing::error!(error = %e, writes = writes.len(), "storage commit failed; its gatherings restart from storage");
        }
        for durable in replies {
            durable.report(result.clone().map_err(|e| e.to_string()));
        }
    }
}
