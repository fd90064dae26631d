//! Prometheus metrics of the server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of `gatherings_dispersed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `idle`, `empty`, `shutdown`, `storage_failed` or `evicted`.
    pub reason: &'static str,
}

/// Label of `joins_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabel {
    /// `unauthorized` (401), `forbidden` (403) or `full` (503: the
    /// gathering holds its most connections).
    pub answer: &'static str,
}

/// Label of `requests_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code a gathering answered with (`rate_limited`,
    /// `forbidden`, `too_many_in_flight`, `bad_frame`, an app's own), or
    /// `full`, `flood` or `lagging` for a connection closed without one.
    pub code: &'static str,
}

/// Every metric the server exports, updated lock-free from any task.
pub struct Metrics {
    /// Gatherings spawned and not yet dispersed.
    pub gatherings_live: Gauge,
    /// Dispersals by reason.
    pub gatherings_dispersed: Family<ReasonLabel, Counter>,
    /// Gatherings spawned (loaded or new).
    pub gatherings_spawned: Counter,
    /// Messages (joins, frames, leaves) processed by gatherings.
    pub messages_processed: Counter,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Time from a dispersal deadline to the tick that acted on it, seconds.
    pub dispersal_lateness: Histogram,
    /// Storage commits (each holds one or more snapshots).
    pub storage_commits: Counter,
    /// Gatherings' commits written (several per storage commit).
    pub storage_writes: Counter,
    /// Bytes of log entries and snapshots written.
    pub storage_bytes: Counter,
    /// Ops logged.
    pub storage_logged: Counter,
    /// Snapshots written.
    pub storage_snapshots: Counter,
    /// Storage commits that failed (their gatherings restart).
    pub storage_failures: Counter,
    /// Gatherings' commits refused by a cluster's store: another node
    /// had claimed the gathering (each disperses with reason `moved`).
    pub storage_fenced: Counter,
    /// Joins a cluster node turned away (4001) to the gathering's owner.
    pub joins_moved: Counter,
    /// Connections refused at a connection cap.
    pub connections_refused: Counter,
    /// Upgrades refused by the authenticator, by answer.
    pub joins_refused: Family<AnswerLabel, Counter>,
    /// Requests refused inside gatherings, after the upgrade, by code.
    pub requests_refused: Family<CodeLabel, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let gatherings_live = Gauge::default();
        let gatherings_dispersed = Family::<ReasonLabel, Counter>::default();
        let gatherings_spawned = Counter::default();
        let messages_processed = Counter::default();
        let connections = Gauge::default();
        // 10 µs .. ~10 s, doubling: dispersal should land in the first buckets.
        let dispersal_lateness = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 20),
        );
        let storage_commits = Counter::default();
        let storage_writes = Counter::default();
        let storage_bytes = Counter::default();
        let storage_logged = Counter::default();
        let storage_snapshots = Counter::default();
        let storage_failures = Counter::default();
        let storage_fenced = Counter::default();
        let joins_moved = Counter::default();
        let connections_refused = Counter::default();
        let joins_refused = Family::<AnswerLabel, Counter>::default();
        let requests_refused = Family::<CodeLabel, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "gatherings_live",
            "Gatherings spawned and not yet dispersed",
            gatherings_live.clone(),
        );
        registry.register(
            "gatherings_dispersed",
            "Gatherings dispersed, by reason",
            gatherings_dispersed.clone(),
        );
        registry.register(
            "gatherings_spawned",
            "Gatherings spawned",
            gatherings_spawned.clone(),
        );
        registry.register(
            "messages_processed",
            "Messages processed by gatherings",
            messages_processed.clone(),
        );
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "dispersal_lateness_seconds",
            "Time from a dispersal deadline to the tick that acted on it",
            dispersal_lateness.clone(),
        );
        registry.register(
            "storage_commits",
            "Durable storage commits",
            storage_commits.clone(),
        );
        registry.register(
            "storage_writes",
            "Gatherings' commits written to storage",
            storage_writes.clone(),
        );
        registry.register(
            "storage_bytes",
            "Bytes of log entries and snapshots written",
            storage_bytes.clone(),
        );
        registry.register("storage_logged", "Ops logged", storage_logged.clone());
        registry.register(
            "storage_snapshots",
            "Snapshots written",
            storage_snapshots.clone(),
        );
        registry.register(
            "storage_failures",
            "Storage commits that failed; their gatherings restart from storage",
            storage_failures.clone(),
        );
        registry.register(
            "storage_fenced",
            "Gatherings' commits refused because another cluster node had claimed the gathering",
            storage_fenced.clone(),
        );
        registry.register(
            "joins_moved",
            "Joins closed with 4001 toward the cluster node that owns the gathering",
            joins_moved.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at --max-connections or --max-connections-per-address",
            connections_refused.clone(),
        );
        registry.register(
            "joins_refused",
            "WebSocket upgrades refused, by answer: unauthorized, forbidden, full",
            joins_refused.clone(),
        );
        registry.register(
            "requests_refused",
            "Joins, ops and fetches a gathering refused, by error code; full, flood and lagging \
             for connections it closed at a limit",
            requests_refused.clone(),
        );
        Metrics {
            gatherings_live,
            gatherings_dispersed,
            gatherings_spawned,
            messages_processed,
            connections,
            dispersal_lateness,
            storage_commits,
            storage_writes,
            storage_bytes,
            storage_logged,
            storage_snapshots,
            storage_failures,
            storage_fenced,
            joins_moved,
            connections_refused,
            joins_refused,
            requests_refused,
            registry,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out = format!("# metrics could not be encoded: {e}\n");
        }
        out
    }
}
