//! The HTTP and WebSocket front: routes, the upgrade, one task per
//! connection and its outbox. It knows the hall only by its mailbox, so it
//! is the same for every application.

pub(crate) mod auth;
pub(crate) mod http;
pub(crate) mod listen;
pub(crate) mod outbox;
mod upgrade;
mod watched;
mod ws;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gathering_core::{Duration, GatheringId};
use gathering_driver::{HallMail, Status};

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::runtime::clock::Clock;
use outbox::Outbox;

/// What the front of one server shares with its connections' tasks.
pub(crate) struct Front {
    /// The clock.
    pub clock: Clock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live gatherings, for `GET /gatherings` and each one's status.
    pub registry: Registry,
    /// The hall task's mailbox: bounded, so that readers feel backpressure.
    pub hall: async_channel::Sender<HallMail<Outbox>>,
    /// Which pages' origins may open WebSockets.
    pub origins: Origins,
    /// Who may join which gathering; `None` runs open (each connection a
    /// member of its own, with every right).
    pub auth: Option<Arc<dyn auth::Authenticator>>,
    /// How long the bytes of one message may take to arrive once begun.
    pub frame_timeout: std::time::Duration,
    /// A session's connection silent this long is pinged (see `Limits`).
    pub ping_interval: std::time::Duration,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// The gatherings' idle timeout, for the listing's countdown.
    pub idle_timeout: Duration,
    /// Connections a gathering holds at once; more are answered 503.
    pub max_per_gathering: u32,
    /// Connection ids, unique for the life of the server.
    pub next_conn: AtomicU64,
    /// How long a shutdown waits for connections and requests.
    pub shutdown_grace: std::time::Duration,
    /// Connection tasks still running, which a shutdown waits for.
    pub open: Open,
    /// The cluster this node belongs to, if any: joins for gatherings
    /// another node owns are sent there.
    pub cluster: Option<Arc<Cluster>>,
}

impl Front {
    /// Asks gatherings to go to another node: every live one (`None`: a
    /// lost lease), or those the fence refused (counted as fenced).
    /// Blocking: called from the lease thread.
    pub fn hand_off(&self, fenced: Option<Vec<GatheringId>>) {
        let ids = match fenced {
            None => self.registry.ids(),
            Some(ids) => {
                self.metrics.storage_fenced.inc_by(ids.len() as u64);
                ids
            }
        };
        for id in ids {
            let _ = self.hall.send_blocking(HallMail::Handoff(id));
        }
    }
}

/// The origins whose pages may open a WebSocket: the server's own (the
/// `Origin` names the host the request was sent to), those listed, or any
/// with `*`. Requests without `Origin` (not from a browser) are not
/// concerned.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    listed: Vec<String>,
    any: bool,
}

impl Origins {
    /// `listed` origins as a browser sends them (`https://app.example.com`,
    /// `http://localhost:3000`); `*` allows every origin.
    pub fn new(listed: impl IntoIterator<Item = String>) -> Self {
        let mut origins = Origins::default();
        for origin in listed {
            let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if origin == "*" {
                origins.any = true;
            } else if !origin.is_empty() {
                origins.listed.push(origin);
            }
        }
        origins
    }

    /// Whether a page of `origin` may connect, sent to `host`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.any || self.listed.contains(&origin) {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
    }
}

/// A count of running connection tasks that can be waited on to reach zero.
#[derive(Default)]
pub(crate) struct Open {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
}

/// Held by a connection task for its whole life, however it ends.
pub(crate) struct OpenGuard<'a>(&'a Open);

impl Open {
    pub fn enter(&self) -> OpenGuard<'_> {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self)
    }

    /// Waits until no connection task runs, or `bound` has passed; returns
    /// how many still run.
    pub async fn drained(&self, bound: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Created before the check, so a change in between still wakes it.
            let changed = self.changed.notified();
            let open = self.count.load(Ordering::Acquire);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.count.load(Ordering::Acquire);
            }
        }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// Live gatherings by id with what each publishes; touched at spawn and
/// dispersal only.
#[derive(Default)]
pub(crate) struct Registry(Mutex<BTreeMap<GatheringId, Arc<Status>>>);

impl Registry {
    pub fn insert(&self, id: GatheringId, status: Arc<Status>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(id, status);
        }
    }

    pub fn remove(&self, id: &GatheringId) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }

    /// What gathering `id` publishes, if it is live.
    pub fn get(&self, id: &GatheringId) -> Option<Arc<Status>> {
        self.0.lock().ok()?.get(id).cloned()
    }

    /// Every live gathering's id, in order.
    pub fn ids(&self) -> Vec<GatheringId> {
        self.0
            .lock()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether no gathering is live.
    pub fn is_empty(&self) -> bool {
        self.0.lock().map(|map| map.is_empty()).unwrap_or(true)
    }

    /// The number of live gatherings and the first `limit` of them by id.
    pub fn list(&self, limit: usize) -> (usize, Vec<(GatheringId, Arc<Status>)>) {
        match self.0.lock() {
            Ok(map) => (
                map.len(),
                map.iter()
                    .take(limit)
                    .map(|(id, s)| (id.clone(), s.clone()))
                    .collect(),
            ),
            Err(_) => (0, Vec::new()),
        }
    }
}
