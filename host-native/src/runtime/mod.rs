//! The native runtime of the shared driver: tokio tasks, a high-resolution
//! timer thread, the hall under a mutex, the group-commit writer, tracing
//! and Prometheus.

pub(crate) mod clock;
#[cfg(feature = "bench")]
mod detection;
pub(crate) mod timer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use gathering_core::{App, Commit, Config, Deadline, GatheringId};
use gathering_driver::{Durable, GatheringLoop, HallState, Loading, Observed, Runtime};

#[cfg(feature = "bench")]
pub use detection::Detection;

use crate::dispersal::{Dispersal, DispersalHook};
use crate::front::Front;
use crate::front::outbox::Outbox;
use crate::metrics::{CodeLabel, ReasonLabel};
use crate::storage::persist::Persister;
use crate::storage::{Store, Write};
use clock::Clock;
use timer::Timers;

/// An application the native host runs: its state and ops move between
/// the runtime's threads. Every `App` whose types are `Send` is one.
pub trait NativeApp: App<Op: Send, Presence: Send> + Send {}

impl<A: App<Op: Send, Presence: Send> + Send> NativeApp for A {}

/// State shared by every task of one server.
pub(crate) struct Shared<A: NativeApp> {
    /// Tunables of every gathering.
    pub config: std::sync::Arc<Config>,
    /// What the HTTP front shares (clock, metrics, listing, hall mailbox).
    pub front: Arc<Front>,
    /// Wakes gathering tasks at their deadlines.
    pub timers: Timers,
    /// The hall.
    pub hall: Mutex<HallState<Native<A>>>,
    /// Storage, for loads.
    pub store: Arc<dyn Store>,
    /// The group-commit writer.
    pub persister: Persister,
    /// Called after every dispersal.
    pub on_dispersed: Option<DispersalHook>,
    /// How stale gatherings are found (benchmarks only).
    #[cfg(feature = "bench")]
    pub detection: Detection,
}

/// The native host as the driver sees it: a handle to [`Shared`].
pub(crate) struct Native<A: NativeApp>(pub Arc<Shared<A>>);

impl<A: NativeApp> Clone for Native<A> {
    fn clone(&self) -> Self {
        Native(self.0.clone())
    }
}

impl<A: NativeApp> Native<A> {
    fn clock(&self) -> Clock {
        self.0.front.clock
    }
}

impl<A: NativeApp> Runtime for Native<A> {
    type App = A;
    type Conn = Outbox;
    #[cfg(not(feature = "bench"))]
    type Timer = timer::Timer;
    #[cfg(feature = "bench")]
    type Timer = detection::BenchTimer;
    type HallGuard<'a> = MutexGuard<'a, HallState<Self>>;

    fn now(&self) -> gathering_core::Instant {
        self.clock().now()
    }

    fn poll_timer(
        &self,
        timer: &mut Self::Timer,
        deadline: Deadline,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        #[cfg(feature = "bench")]
        return detection::poll(
            self.0.detection,
            &self.0.timers,
            self.clock(),
            timer,
            deadline,
            cx,
        );
        #[cfg(not(feature = "bench"))]
        self.0
            .timers
            .poll(timer, self.clock().to_std(deadline.at), cx)
    }

    fn config(&self) -> &std::sync::Arc<Config> {
        &self.0.config
    }

    fn hall(&self) -> Self::HallGuard<'_> {
        // Every change under the lock leaves the maps consistent, so a
        // panic elsewhere while it was held does not make them unusable.
        self.0.hall.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self, loading: Loading<Self>) {
        let store = self.0.store.clone();
        tokio::spawn(async move {
            let id = loading.id().clone();
            let loaded = tokio::task::spawn_blocking(move || store.load(&id))
                .await
                .map_err(|e| format!("storage task failed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            loading.finish(loaded);
        });
    }

    fn persist(&self, id: &GatheringId, commit: Commit, durable: Durable<Outbox>) {
        let write = Write {
            id: id.clone(),
            commit,
        };
        self.0.persister.submit(write, durable);
    }

    fn spawn(&self, task: GatheringLoop<Self>) {
        tokio::spawn(task.run());
    }

    /// Wall-clock microseconds, and never the same twice in this process:
    /// a store wiped and created anew gets epochs it never held.
    fn fresh_epoch(&self) -> u64 {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let before = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(before + 1)
    }

    #[cfg_attr(not(feature = "bench"), allow(unused_variables))]
    fn handled(&self, timer: &mut Self::Timer, inbound: u32) {
        self.0
            .front
            .metrics
            .messages_processed
            .inc_by(u64::from(inbound));
        #[cfg(feature = "bench")]
        detection::handled(
            self.0.detection,
            self.clock(),
            self.0.config.idle_timeout,
            timer,
        );
    }

    fn observe(&self, what: Observed<'_>) {
        let front = &self.0.front;
        let metrics = &front.metrics;
        match what {
            Observed::Spawned { id, seq, status } => {
                front.registry.insert(id.clone(), status.clone());
                metrics.gatherings_live.inc();
                metrics.gatherings_spawned.inc();
                tracing::info!(id = %id, seq, "gathering spawned");
            }
            Observed::SpawnFailed { id, error } => {
                tracing::error!(id = %id, error, "gathering could not be spawned");
            }
            Observed::PersistFailed { id, error } => {
                tracing::warn!(id = %id, error, "snapshot not written; will retry");
            }
            Observed::DisperseRequested {
                id,
                reason,
                processed,
            } => {
                tracing::debug!(id = %id, reason = %reason, processed, "dispersal requested");
            }
            Observed::Dispersed {
                id,
                reason,
                late,
                seq,
            } => {
                front.registry.remove(id);
                // Its final state is durable: a cluster lets another node
                // claim it.
                self.0.store.released(id);
                metrics.gatherings_live.dec();
                metrics
                    .gatherings_dispersed
                    .get_or_create(&ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc();
                if reason != gathering_core::DisperseReason::Shutdown {
                    metrics.dispersal_lateness.observe(late.as_secs_f64());
                }
                if let Some(hook) = &self.0.on_dispersed {
                    hook(&Dispersal {
                        id: id.clone(),
                        reason,
                        late,
                        seq,
                    });
                }
                tracing::info!(
                    id = %id,
                    reason = %reason,
                    lateness_us = late.as_micros() as u64,
                    seq,
                    "gathering dispersed"
                );
            }
            Observed::ShuttingDown { gatherings } => {
                tracing::info!(gatherings, "shutting down: dispersing every gathering");
            }
            Observed::Refused { code, .. } => {
                metrics
                    .requests_refused
                    .get_or_create(&CodeLabel { code })
                    .inc();
            }
            Observed::Unavailable { id } => {
                tracing::error!(id = %id, "no mailbox for a live gathering; closing the connection");
            }
        }
    }
}
