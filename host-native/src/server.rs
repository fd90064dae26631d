//! Wiring: storage, the hall, the HTTP server, and graceful shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gathering_core::{Config, ConnId, Encoding, GatheringId, Inbound};

use crate::clock::Clock;
use crate::config::Args;
use crate::gathering_task::Status;
use crate::hall_task::{self, HallHandles, HallMail};
use crate::metrics::Metrics;
use crate::persist::Persister;
use crate::store::{RedbStore, Store};
use crate::timer::Timers;

/// Messages waiting for the hall before readers feel backpressure.
const HALL_MAILBOX: usize = 65_536;

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Directory of the embedded database.
    pub data_dir: PathBuf,
    /// Tunables of every gathering.
    pub gathering: Config,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Directory served at `/` (the demo page), or `None` for no page.
    pub web_dir: Option<PathBuf>,
    /// How stale gatherings are found. Only benchmarks change this.
    pub detection: Detection,
    /// Keep every dispersal's lateness in `Metrics::lateness_samples`
    /// (benchmarks; unbounded, so off in a server).
    pub record_lateness: bool,
}

/// How a gathering task finds out that its gathering went stale.
///
/// [`Detection::Exact`] is the product; the others exist so that
/// benchmarks can measure it against the alternatives in the same host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detection {
    /// The core's contract: one timer, re-armed only when a deadline is
    /// earlier than the armed one.
    #[default]
    Exact,
    /// No idle or empty dispersal at all (the baseline): gatherings never
    /// disperse on their own, and a retry due after the idle deadline waits
    /// for the next mail.
    Off,
    /// Also reset a second timer to `now + idle_timeout` after every mail,
    /// as hosts that re-arm per message do.
    RearmPerMessage,
}

impl From<Args> for ServerConfig {
    fn from(a: Args) -> Self {
        ServerConfig {
            listen: a.listen,
            data_dir: a.data_dir,
            gathering: Config {
                idle_timeout: a.idle_timeout,
                empty_grace: a.empty_grace,
                retry_interval: a.retry_interval,
                max_retry_interval: a.retry_interval.saturating_mul(30),
                ..Config::default()
            },
            max_frame_bytes: usize::try_from(a.max_frame_bytes).unwrap_or(usize::MAX),
            web_dir: Some(a.web_dir),
            detection: Detection::Exact,
            record_lateness: false,
        }
    }
}

/// State shared by every task of one server.
pub struct Shared {
    /// The configuration.
    pub config: ServerConfig,
    /// The clock.
    pub clock: Clock,
    /// Wakes gathering tasks at their deadlines.
    pub timers: Timers,
    /// The hall: its task's mailbox and its state.
    pub hall: HallHandles,
    /// Storage, for loads.
    pub store: Arc<dyn Store>,
    /// The group-commit writer.
    pub persister: Persister,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live gatherings, for `GET /gatherings`; touched at spawn and dispersal only.
    pub registry: Mutex<BTreeMap<GatheringId, Arc<Status>>>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// Storage could not be opened.
    Store(String),
    /// The address could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Store(e) => write!(f, "storage: {e}"),
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Thread(e) => write!(f, "cannot start a server thread: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    hall: async_channel::Sender<HallMail>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Shuts down gracefully: stop accepting, disperse and persist every
    /// gathering (clients get `dispersed` and close code 1001), flush storage.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }

    /// Spawns gathering `id` if it is not live and counts as activity, as a
    /// connection that joins and leaves at once would. For warming
    /// gatherings ahead of a crowd, and for benchmarks that need many
    /// gatherings without sockets. Fails only once the server is stopping.
    pub async fn touch(&self, id: GatheringId) -> Result<(), Stopping> {
        let conn = ConnId(crate::ws::NEXT_CONN.fetch_add(1, Ordering::Relaxed));
        let join = Inbound::Join {
            conn,
            encoding: Encoding::Json,
        };
        self.hall
            .send(HallMail::Route(id.clone(), join, None))
            .await
            .map_err(|_| Stopping)?;
        self.hall
            .send(HallMail::Route(id, Inbound::Leave { conn }, None))
            .await
            .map_err(|_| Stopping)
    }

    /// Waits until the server has stopped.
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

/// The server is shutting down and takes no new traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopping;

impl fmt::Display for Stopping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server is shutting down")
    }
}

impl std::error::Error for Stopping {}

/// Opens storage, binds, and starts serving in the background.
pub async fn start(config: ServerConfig) -> Result<Running, ServerError> {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&config.data_dir).map_err(|e| ServerError::Store(e.to_string()))?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Bind(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Bind(config.listen, e))?;
    let metrics = Arc::new(Metrics::default());
    let (persister, writer) =
        Persister::start(store.clone(), metrics.clone()).map_err(ServerError::Thread)?;
    let timers = Timers::start().map_err(ServerError::Thread)?;
    let (hall_tx, hall_rx) = async_channel::bounded(HALL_MAILBOX);
    let hall_tx_for_touch = hall_tx.clone();
    let shared = Arc::new(Shared {
        config,
        clock: Clock::default(),
        timers,
        hall: HallHandles::new(hall_tx.clone()),
        store,
        persister,
        metrics: metrics.clone(),
        registry: Mutex::new(BTreeMap::new()),
    });
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_stop, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hall = tokio::spawn(hall_task::run(hall_rx, shared.clone()));
    let http = tokio::spawn(
        warp::serve(crate::http::routes(shared.clone()))
            .incoming(listener)
            .graceful(async move {
                let _ = http_stop_rx.await;
            })
            .run(),
    );
    tracing::info!(%addr, data_dir = %shared.config.data_dir.display(), "listening");
    let done = tokio::spawn(async move {
        let _ = stop_rx.await;
        // Stop accepting first, then disperse what is live.
        let _ = http_stop.send(());
        let _ = hall_tx.send(HallMail::Shutdown).await;
        let _ = hall.await;
        let _ = http.await;
        drop(shared);
        // The writer exits once every handle is gone and its queue is empty.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        tracing::info!("shut down");
    });
    Ok(Running {
        addr,
        metrics,
        hall: hall_tx_for_touch,
        stop,
        done,
    })
}

/// Runs a server until `signal` completes, then shuts it down gracefully.
pub async fn run(
    config: ServerConfig,
    signal: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let running = start(config).await?;
    signal.await;
    tracing::info!("signal received");
    running.shutdown().await;
    Ok(())
}
