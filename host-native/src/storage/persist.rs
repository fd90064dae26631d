//! Group commit: every gathering's commit waiting when the writer is free
//! goes into one durable transaction, so throughput does not collapse to
//! one fsync per op; under load, commits are also paced (see
//! [`Persister::start`]), so that more ops share each fsync. A gathering
//! may queue several commits (`Config::overlap_commits`, which this host
//! sets): they are written in order, and none after one that failed.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gathering_driver::{Durable, FailedWrites};

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
    /// Starts the writer thread over `store`, its commits paced by
    /// `interval` (see `Builder::commit_interval` and [`Pace`]).
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, rx) = async_channel::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name("gathering-store".into())
            .spawn(move || write_loop(&*store, &rx, &metrics, interval))?;
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

fn write_loop(
    store: &dyn Store,
    rx: &async_channel::Receiver<Job>,
    metrics: &Metrics,
    interval: Duration,
) {
    let mut pace = Pace::new(interval);
    let mut failed = FailedWrites::default();
    while let Ok(first) = rx.recv_blocking() {
        if let Some(wait) = pace.wait(Instant::now()) {
            std::thread::sleep(wait);
        }
        let began = Instant::now();
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if failed.follows_failure(&job.durable) {
                // Written, it would leave a gap in the gathering's log.
                let error = "not written: an earlier commit of this gathering failed";
                failed.fail(job.durable, error.into());
            } else {
                replies.push(job.durable);
                writes.push(job.write);
            }
            if writes.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if writes.is_empty() {
            continue;
        }
        pace.began(began, writes.iter().any(|w| w.id != writes[0].id));
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
        if let Ok(fenced) = &result
            && !fenced.is_empty()
        {
            metrics.storage_fenced.inc_by(fenced.len() as u64);
            tracing::warn!(
                gatherings = fenced.len(),
                "commits fenced: another node owns their gatherings now"
            );
        }
        for (durable, write) in replies.into_iter().zip(&writes) {
            match &result {
                Ok(fenced) => match fenced.iter().find(|(id, _)| *id == write.id) {
                    None => durable.report(Ok(())),
                    Some((_, why)) => failed.fence(durable, why.clone()),
                },
                Err(e) => failed.fail(durable, e.to_string()),
            }
        }
    }
}

/// When the next commit may start: `interval` after one that held several
/// gatherings' writes began, at once after any other (one gathering's
/// commits alone, however many: a lone client's round trip never waits).
struct Pace {
    interval: Duration,
    /// When the last commit began, if it held several gatherings' writes.
    shared: Option<Instant>,
}

impl Pace {
    fn new(interval: Duration) -> Self {
        Pace {
            interval,
            shared: None,
        }
    }

    /// How long a commit wanted at `now` waits first, if at all.
    fn wait(&self, now: Instant) -> Option<Duration> {
        let began = self.shared?;
        let wait = (began + self.interval).saturating_duration_since(now);
        (!wait.is_zero()).then_some(wait)
    }

    /// A commit began at `at`; `shared`: it held several gatherings'
    /// writes.
    fn began(&mut self, at: Instant, shared: bool) {
        self.shared = shared.then_some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_of_several_gatherings_are_paced_and_a_lone_one_never_waits() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut pace = Pace::new(ms(3));
        assert_eq!(pace.wait(t0), None, "the first commit goes at once");
        pace.began(t0, true);
        assert_eq!(
            pace.wait(t0 + ms(1)),
            Some(ms(2)),
            "the rest of the interval"
        );
        assert_eq!(pace.wait(t0 + ms(3)), None);
        assert_eq!(pace.wait(t0 + ms(10)), None, "after a quiet spell, at once");
        // One gathering alone (a lone client): its next commit never waits.
        pace.began(t0 + ms(10), false);
        assert_eq!(pace.wait(t0 + ms(10)), None);
        // No interval: commits whenever the writer is free.
        let mut eager = Pace::new(Duration::ZERO);
        eager.began(t0, true);
        assert_eq!(eager.wait(t0), None);
    }
}
