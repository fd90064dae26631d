//! Building and running a server for an application: storage, the hall,
//! the HTTP front, and graceful shutdown.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gathering_core::{Config, ConnId, Encoding, GatheringId, Inbound};
use gathering_driver::{HallMail, HallState, hall_task};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::cluster::{Cluster, ClusterOptions};
use crate::dispersal::{Dispersal, DispersalHook};
use crate::front::auth::Authenticator;
#[cfg(doc)]
use crate::front::auth::Jwt;
use crate::front::listen::Limits;
use crate::front::outbox::Outbox;
use crate::front::{Front, Open, Origins, Registry};
use crate::metrics::Metrics;
#[cfg(feature = "bench")]
use crate::runtime::Detection;
use crate::runtime::clock::Clock;
use crate::runtime::timer::Timers;
use crate::runtime::{Native, NativeApp, Shared};
use crate::storage::persist::Persister;
use crate::storage::{RedbStore, Store, StoreError};

/// How long a shutdown waits for connections to say goodbye, by default:
/// enough for a close handshake (2 s) with a client that reads.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Under load, storage commits start at least this far apart (see
/// [`Builder::commit_interval`]); the other intervals tried are in
/// BENCHMARKS.md, "Tried and not kept".
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(3);

/// Messages waiting for the hall before readers feel backpressure.
const HALL_MAILBOX: usize = 65_536;

/// The server of application `A`; start one with [`Server::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), gathering_native::ServerError> {
/// use gathering_core::tournament::Tournament;
/// use gathering_native::Server;
///
/// let running = Server::<Tournament>::builder()
///     .listen("127.0.0.1:8080".parse().unwrap())
///     .data_dir("./data")
///     .start()
///     .await?;
/// println!("listening on {}", running.addr);
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server<A>(PhantomData<A>);

impl<A: NativeApp> Server<A> {
    /// A builder with the embedded defaults: `127.0.0.1:8080`, data in
    /// `./data`, [`Config::default`], 1 MiB frames, no page.
    pub fn builder() -> Builder<A> {
        Builder {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            data_dir: PathBuf::from("./data"),
            gathering: Config::default(),
            max_frame_bytes: gathering_core::protocol::DEFAULT_MAX_FRAME_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            origins: Origins::default(),
            auth: None,
            limits: Limits::default(),
            web_dir: None,
            store: None,
            cluster: None,
            on_dispersed: None,
            #[cfg(feature = "bench")]
            detection: Detection::Exact,
            app: PhantomData,
        }
    }
}

/// How to start a [`Server`]; every setting has a default.
pub struct Builder<A> {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    data_dir: PathBuf,
    gathering: Config,
    max_frame_bytes: usize,
    shutdown_grace: Duration,
    commit_interval: Duration,
    origins: Origins,
    auth: Option<Arc<dyn Authenticator>>,
    limits: Limits,
    web_dir: Option<PathBuf>,
    store: Option<Arc<dyn Store>>,
    cluster: Option<ClusterOptions>,
    on_dispersed: Option<DispersalHook>,
    #[cfg(feature = "bench")]
    detection: Detection,
    app: PhantomData<A>,
}

impl<A> fmt::Debug for Builder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("data_dir", &self.data_dir)
            .field("gathering", &self.gathering)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("web_dir", &self.web_dir)
            .finish_non_exhaustive()
    }
}

impl<A: NativeApp> Builder<A> {
    /// Address to listen on (port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Address of the admin listener, which serves `GET /gatherings` (every
    /// live id) and `/metrics`; `None` (the default) runs none. Keep it on
    /// loopback or a private network: the public listener serves neither.
    pub fn admin_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin_listen = addr;
        self
    }

    /// Directory of the embedded database (created if missing). The app's
    /// gatherings are kept under its [`App::NAME`].
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Tunables of every gathering. `overlap_commits` is always on here:
    /// this host's writer keeps the order and failure rule it asks for.
    pub fn gathering(mut self, config: Config) -> Self {
        self.gathering = config;
        self
    }

    /// Largest frame accepted from a client, in bytes; larger ones close
    /// the connection with 1009.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// How long a shutdown waits, once every gathering has dispersed, for
    /// connections to write their goodbyes and close, and for HTTP requests
    /// under way; then the rest are dropped. No client can hold a shutdown
    /// open past it.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Under load, how far apart storage commits start: after one that
    /// held several gatherings' writes, the next waits out the rest of
    /// this, so that the ops arriving meanwhile share its fsync. A commit
    /// costs about the same however many ops it holds, so this bounds the
    /// CPU durability takes, for at most this much more ack latency; a
    /// commit of one gathering alone never waits. Zero commits whenever
    /// the writer is free.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Origins of other sites whose pages may open WebSockets here (as a
    /// browser sends them, e.g. `https://app.example.com`; `*` for any).
    /// By default only the server's own pages may: a page elsewhere that a
    /// user visits cannot act on gatherings with the user's reach. Clients
    /// that send no `Origin` (not browsers) are always served.
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = String>) -> Self {
        self.origins = Origins::new(origins);
        self
    }

    /// Checks every WebSocket upgrade with `auth` (for example [`Jwt`]):
    /// refused ones get HTTP 401 or 403 before the upgrade, admitted ones
    /// act as the member it names, until it expires (then 4003). Without
    /// one the server runs open: each connection a member of its own,
    /// with every right.
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Caps on connections and deadlines for HTTP requests of the listener
    /// [`Builder::start`] runs (routes mounted elsewhere get only the frame
    /// deadline).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A directory of static files served at `/` (a web page).
    pub fn web_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.web_dir = Some(dir.into());
        self
    }

    /// Keeps gatherings in `store` instead of the embedded redb database
    /// in [`Builder::data_dir`].
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Calls `hook` after every dispersal (from the gathering's task: keep
    /// it short).
    pub fn on_dispersed(mut self, hook: impl Fn(&Dispersal) + Send + Sync + 'static) -> Self {
        self.on_dispersed = Some(Arc::new(hook));
        self
    }

    /// How stale gatherings are found (benchmarks only).
    #[cfg(feature = "bench")]
    pub fn detection(mut self, detection: Detection) -> Self {
        self.detection = detection;
        self
    }

    /// Runs as a node of the cluster `options` describe: gatherings live
    /// in its PostgreSQL database, each owned by one node at a time (see
    /// docs/CLUSTER.md); the data directory is not used. A shutdown then
    /// drains: the node reports unhealthy, sends joins elsewhere, and hands
    /// its gatherings off at `drain_rate` per second.
    pub fn cluster(mut self, options: ClusterOptions) -> Self {
        self.cluster = Some(options);
        self
    }

    /// Opens storage and starts the hall, without listening: mount
    /// [`Engine::routes`] in a warp server of your own.
    pub fn build(self) -> Result<Engine, ServerError> {
        let cluster = match self.cluster {
            // The blocking PostgreSQL client runs a runtime of its own,
            // which must not start on a thread of this one.
            Some(options) => std::thread::scope(|s| {
                s.spawn(|| Cluster::open(options, A::NAME))
                    .join()
                    .unwrap_or_else(|_| Err(StoreError("the cluster's set-up panicked".into())))
            })
            .map(|cluster| Some(Arc::new(cluster)))
            .map_err(|e| ServerError::Store(e.to_string()))?,
            None => None,
        };
        let store: Arc<dyn Store> = match (self.store, &cluster) {
            (Some(store), _) => store,
            (None, Some(cluster)) => cluster.clone(),
            (None, None) => Arc::new(
                RedbStore::open(&self.data_dir, A::NAME)
                    .map_err(|e| ServerError::Store(e.to_string()))?,
            ),
        };
        let metrics = Arc::new(Metrics::default());
        let (persister, writer) =
            Persister::start(store.clone(), metrics.clone(), self.commit_interval)
                .map_err(ServerError::Thread)?;
        let timers = Timers::start().map_err(ServerError::Thread)?;
        let (hall_tx, hall_rx) = async_channel::bounded(HALL_MAILBOX);
        let front = Arc::new(Front {
            clock: Clock::default(),
            metrics: metrics.clone(),
            registry: Registry::default(),
            hall: hall_tx,
            max_frame_bytes: self.max_frame_bytes,
            shutdown_grace: self.shutdown_grace,
            origins: self.origins,
            auth: self.auth,
            frame_timeout: self.limits.frame_timeout,
            ping_interval: self.limits.ping_interval,
            idle_timeout: self.gathering.idle_timeout,
            max_per_gathering: self.gathering.max_connections,
            next_conn: AtomicU64::new(1),
            open: Open::default(),
            cluster: cluster.clone(),
        });
        if let Some(cluster) = &cluster {
            // A lease lost, or renewed too late: other nodes may have
            // claimed this node's gatherings, all or the ones named.
            let front = Arc::downgrade(&front);
            cluster
                .start_lease(move |fenced| {
                    if let Some(front) = front.upgrade() {
                        front.hand_off(fenced);
                    }
                })
                .map_err(ServerError::Thread)?;
        }
        let (hall, settled) = HallState::new();
        let native = Native::<A>(Arc::new(Shared {
            // This host's writer keeps the order of a gathering's commits
            // and writes none after a failed one, so gatherings need not
            // wait for one commit before queuing the next.
            config: Config {
                overlap_commits: true,
                ..self.gathering
            }
            .into(),
            front: front.clone(),
            timers,
            hall: Mutex::new(hall),
            store,
            persister,
            on_dispersed: self.on_dispersed,
            #[cfg(feature = "bench")]
            detection: self.detection,
        }));
        let hall = tokio::spawn(hall_task(native, hall_rx, settled));
        let done = tokio::spawn(async move {
            // The hall's task ends once a shutdown has completed; it held
            // the last handle to the runtime but for the tasks that ended.
            let _ = hall.await;
            // The writer exits once every handle is gone and its queue is empty.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        });
        Ok(Engine {
            front,
            done: Mutex::new(Some(done)),
        })
    }

    /// Opens storage, binds, and starts serving in the background: the
    /// engine's public routes, then the page of [`Builder::web_dir`] if any;
    /// and the admin routes on [`Builder::admin_listen`] if set.
    pub async fn start(self) -> Result<Running, ServerError> {
        let limits = self.limits;
        let web_dir = self.web_dir.clone();
        let storage = match &self.cluster {
            Some(c) => format!("cluster node {} (PostgreSQL)", c.node),
            None => self.data_dir.display().to_string(),
        };
        let (listener, addr) = bind(self.listen).await?;
        let admin = match self.admin_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let engine = self.build()?;
        let page = match web_dir {
            Some(dir) => warp::get().and(warp::fs::dir(dir)).boxed(),
            None => warp::any()
                .and_then(|| async { Err::<warp::fs::File, _>(warp::reject::not_found()) })
                .boxed(),
        };
        let routes = crate::front::http::routes(engine.front.clone())
            .or(page)
            .recover(crate::front::http::recover);
        let (http_stop, stopped) = tokio::sync::watch::channel(false);
        let stop = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let metrics = engine.front.metrics.clone();
        let mut http = vec![tokio::spawn(crate::front::listen::serve(
            listener,
            routes,
            limits,
            metrics.clone(),
            stop(),
        ))];
        let admin_addr = admin.map(|(listener, at)| {
            let routes = crate::front::http::admin_routes(engine.front.clone())
                .recover(crate::front::http::recover);
            http.push(tokio::spawn(crate::front::listen::serve(
                listener,
                routes,
                limits,
                metrics.clone(),
                stop(),
            )));
            at
        });
        let admin = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(%addr, %admin, %storage, app = A::NAME, "listening");
        Ok(Running {
            addr,
            admin_addr,
            metrics,
            engine,
            http,
            http_stop,
        })
    }
}

/// Binds `at`, returning the listener and the address it got.
async fn bind(at: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| ServerError::Bind(at, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Bind(at, e))?;
    Ok((listener, addr))
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

/// A started hall with its storage, for any application: its routes serve
/// WebSocket joins and the listing; [`Engine::shutdown`] ends it.
pub struct Engine {
    front: Arc<Front>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine's public warp filter: `GET /gatherings/{id}`
    /// (WebSocket), `/gatherings/{id}/status`, `/healthz`. It rejects other
    /// requests, so it composes with `.or`; finish with
    /// `.recover(gathering_native::recover)` for its error answers.
    /// Boxed once, so that it owns what it serves and outlives `&self`.
    pub fn routes(&self) -> BoxedFilter<(Response,)> {
        crate::front::http::routes(self.front.clone())
            .map(Reply::into_response)
            .boxed()
    }

    /// The engine's admin warp filter, for a listener only operators reach:
    /// `GET /gatherings` (live ids, `?limit=` at most 1,000), `/metrics`,
    /// `/healthz`.
    pub fn admin_routes(&self) -> BoxedFilter<(Response,)> {
        crate::front::http::admin_routes(self.front.clone())
            .map(Reply::into_response)
            .boxed()
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.front.metrics
    }

    /// Spawns gathering `id` if it is not live and counts as activity, as a
    /// connection that joins and leaves at once would. For warming
    /// gatherings ahead of a crowd, and for benchmarks that need many
    /// gatherings without sockets. Fails only once the server is stopping.
    pub async fn touch(&self, id: GatheringId) -> Result<(), Stopping> {
        let conn = ConnId(self.front.next_conn.fetch_add(1, Ordering::Relaxed));
        let join = Inbound::open_join(conn, Encoding::Json);
        let hall = &self.front.hall;
        hall.send(HallMail::Route(id.clone(), join, None::<Outbox>))
            .await
            .map_err(|_| Stopping)?;
        hall.send(HallMail::Route(
            id,
            Inbound::Leave { conn, clean: false },
            None,
        ))
        .await
        .map_err(|_| Stopping)
    }

    /// Disperses and persists every gathering (clients get `dispersed` and
    /// close code 1001), then flushes storage. New joins are turned away
    /// with 1001 meanwhile.
    pub async fn shutdown(&self) {
        if let Some(cluster) = &self.front.cluster {
            self.drain(cluster).await;
        }
        let _ = self.front.hall.send(HallMail::Shutdown).await;
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            let _ = done.await;
        }
        // Every gathering queued its goodbyes; they are written by the
        // connections' tasks, which the process must outlive.
        let left = self.front.open.drained(self.front.shutdown_grace).await;
        if left > 0 {
            tracing::warn!(connections = left, "shutdown grace over; closing the rest");
        }
        if let Some(cluster) = self.front.cluster.clone() {
            let _ = tokio::task::spawn_blocking(move || cluster.leave()).await;
        }
    }

    /// A cluster node's shutdown: it reports unhealthy and sends new joins
    /// elsewhere, then hands its gatherings off at the drain rate (each
    /// makes its final commit and tells its clients 4001), and waits for
    /// them to go, for at most the time the rate needs plus the grace.
    async fn drain(&self, cluster: &Cluster) {
        cluster.drain();
        let ids = self.front.registry.ids();
        tracing::info!(
            gatherings = ids.len(),
            "draining: handing every gathering off"
        );
        let rate = cluster.drain_rate().max(1);
        let gap = Duration::from_secs(1) / rate;
        for id in &ids {
            let _ = self.front.hall.send(HallMail::Handoff(id.clone())).await;
            tokio::time::sleep(gap).await;
        }
        let deadline = tokio::time::Instant::now() + self.front.shutdown_grace;
        while !self.front.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin listener's address, if it runs one.
    pub admin_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    engine: Engine,
    http: Vec<tokio::task::JoinHandle<()>>,
    http_stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Shuts down gracefully: stop accepting, disperse and persist every
    /// gathering (clients get `dispersed` and close code 1001), flush storage.
    pub async fn shutdown(mut self) {
        // Stop accepting first, then disperse what is live.
        let _ = self.http_stop.send(true);
        self.engine.shutdown().await;
        // A request still half-sent would hold the graceful HTTP shutdown
        // open for as long as its client likes.
        let deadline = tokio::time::Instant::now() + self.engine.front.shutdown_grace;
        for http in &mut self.http {
            if tokio::time::timeout_at(deadline, &mut *http).await.is_err() {
                tracing::warn!("HTTP requests still open after the shutdown grace; dropped");
                http.abort();
            }
        }
        tracing::info!("shut down");
    }

    /// See [`Engine::touch`].
    pub async fn touch(&self, id: GatheringId) -> Result<(), Stopping> {
        self.engine.touch(id).await
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
