//! The server's command line, for any application: `gathering-server` is
//! [`main`] with the tournament, and a user's own server binary is the same
//! call with their app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use gathering_core::Config;
use tracing_subscriber::EnvFilter;

use crate::cluster::ClusterOptions;
use crate::front::auth::Jwt;
use crate::front::listen::Limits;
use crate::runtime::NativeApp;
use crate::server::{Builder, Server};

/// The gathering server: live per-room state over WebSockets, dispersed when idle.
#[derive(Clone, Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Something else than serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Secret of the HS256 tokens (JWT) that joins must present, as
    /// `Authorization: Bearer <token>` or `?token=<token>`; without it the
    /// server runs open (every connection may do everything).
    #[arg(
        long,
        env = "GATHERING_AUTH_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub auth_secret: Option<String>,

    /// Run open (no --auth-secret) on an address other than loopback too.
    #[arg(long)]
    pub open: bool,

    /// Address to listen on.
    #[arg(long, env = "GATHERING_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin listener, which serves the list of live
    /// gatherings (GET /gatherings) and /metrics; `off` for none. Keep it
    /// on loopback or a private network: the public listener serves neither.
    #[arg(long, env = "GATHERING_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN, value_parser = admin_address)]
    pub admin_listen: AdminListen,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "GATHERING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Disperse a gathering that processed no message for this long (e.g. 24h, 90s).
    #[arg(long, env = "GATHERING_IDLE_TIMEOUT", default_value = "24h", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Also disperse a gathering left without connections for this long (off by default).
    #[arg(long, env = "GATHERING_EMPTY_GRACE", value_parser = positive_duration)]
    pub empty_grace: Option<Duration>,

    /// First wait before re-sending an unacknowledged forward; it doubles after each re-send, up to 30 times this.
    #[arg(long, env = "GATHERING_RETRY_INTERVAL", default_value_t = gathering_core::DEFAULT_RETRY_INTERVAL.into(), value_parser = positive_human)]
    pub retry_interval: humantime::Duration,

    /// Largest frame accepted from a client, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "GATHERING_MAX_FRAME_BYTES", default_value_t = gathering_core::protocol::DEFAULT_MAX_FRAME_BYTES as u64, value_parser = clap::value_parser!(u64).range(64..=(64 << 20)))]
    pub max_frame_bytes: u64,

    /// Write a gathering's whole state (and drop its op log) once this many
    /// ops were logged since its last snapshot; bounds what a spawn replays.
    #[arg(long, env = "GATHERING_SNAPSHOT_OPS", default_value_t = gathering_core::DEFAULT_SNAPSHOT_OPS, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_ops: u32,

    /// ... or once its op log since the last snapshot holds this many bytes.
    #[arg(long, env = "GATHERING_SNAPSHOT_BYTES", default_value_t = gathering_core::DEFAULT_SNAPSHOT_BYTES, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_bytes: u32,

    /// Under load, how far apart storage commits start, so that more ops
    /// share each fsync: at most this much more ack latency, for less CPU
    /// per op; a commit of one gathering alone never waits. 0s for none.
    #[arg(long, env = "GATHERING_COMMIT_INTERVAL", default_value = "3ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,

    /// Ops of one connection waiting for their commit; more are refused with
    /// error `too_many_in_flight` until acks arrive. At most 256: the acks a
    /// commit releases at once must fit in the connection's queue beside its
    /// forwards and read-ahead.
    #[arg(long, env = "GATHERING_MAX_IN_FLIGHT", default_value_t = gathering_core::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_in_flight: u32,

    /// On SIGTERM or SIGINT, once every gathering has dispersed, how long to
    /// wait for clients to receive their goodbyes before exiting.
    #[arg(long, env = "GATHERING_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Origins of other sites whose pages may open WebSockets, comma-separated
    /// (e.g. https://app.example.com), or * for any; the server's own pages
    /// always may, and clients that send no Origin are always served.
    #[arg(long, env = "GATHERING_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Connections open at once (HTTP and WebSocket); more are answered 503.
    /// 0 for no cap.
    #[arg(long, env = "GATHERING_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,

    /// Connections open at once from one IP address; more are answered 503.
    /// 0 for no cap.
    #[arg(long, env = "GATHERING_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = Limits::default().max_per_address)]
    pub max_connections_per_address: usize,

    /// Time a client has to send a request's headers.
    #[arg(long, env = "GATHERING_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// Time a connection may stay plain HTTP (not upgraded to a WebSocket).
    #[arg(long, env = "GATHERING_HTTP_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub http_timeout: Duration,

    /// Time the bytes of one WebSocket message may take to arrive once they begin.
    #[arg(long, env = "GATHERING_FRAME_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub frame_timeout: Duration,

    /// A session's connection silent this long is pinged; silent twice as
    /// long (no frame, no pong), it is closed.
    #[arg(long, env = "GATHERING_PING_INTERVAL", default_value = "20s", value_parser = positive_duration)]
    pub ping_interval: Duration,

    /// Connections one gathering holds at once; more are answered 503
    /// before the upgrade (or closed with 1013). 0 for no bound.
    #[arg(
        long,
        env = "GATHERING_MAX_CONNECTIONS_PER_GATHERING",
        default_value_t = 1000
    )]
    pub max_connections_per_gathering: u32,

    /// Ops a second one connection may send (a fetch counts as one), after
    /// a burst of --op-burst; more get error `rate_limited`, and a
    /// connection that keeps on is closed with 1008. 0 for no limit.
    #[arg(long, env = "GATHERING_MAX_OPS_PER_SEC", default_value_t = 100)]
    pub max_ops_per_sec: u32,

    /// Live gatherings at once; when another is wanted, the least recently
    /// active disperses early (reason `evicted`, close 4000; its state is
    /// saved first). 0 for no bound.
    #[arg(long, env = "GATHERING_MAX_GATHERINGS", default_value_t = 100_000)]
    pub max_gatherings: u32,

    /// See --max-ops-per-sec.
    #[arg(long, env = "GATHERING_OP_BURST", default_value_t = 200)]
    pub op_burst: u32,

    /// Sessions one gathering remembers (which ops each applied, for
    /// exactly-once retries): the most recently active; at least 1.
    #[arg(long, env = "GATHERING_MAX_SESSIONS", default_value_t = gathering_core::DEFAULT_MAX_SESSIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,

    /// Bytes one member's presence may take as sent; larger is refused with
    /// error `presence_too_large`.
    #[arg(long, env = "GATHERING_MAX_PRESENCE_BYTES", default_value_t = gathering_core::DEFAULT_MAX_PRESENCE_BYTES)]
    pub max_presence_bytes: u32,

    /// How long a member whose connection was lost without a close stays
    /// present: a rejoin within it shows no leave and no join.
    #[arg(long, env = "GATHERING_PRESENCE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub presence_grace: Duration,

    /// Directory of the demo page served at `/` (built by scripts/build-web.sh).
    #[arg(long, env = "GATHERING_WEB_DIR", default_value = DEFAULT_WEB_DIR)]
    pub web_dir: PathBuf,

    /// Run as a node of a cluster whose gatherings live in this PostgreSQL
    /// database (postgres://user@host:port/db) instead of the data
    /// directory; one node owns each gathering (docs/CLUSTER.md).
    #[arg(
        long,
        env = "GATHERING_CLUSTER",
        requires = "node",
        hide_env_values = true
    )]
    pub cluster: Option<String>,

    /// This node's name in the cluster: unique, and the same across its
    /// restarts; 1-64 characters of A-Z a-z 0-9 _ - . (clients send it
    /// back as ?node= to be pinned here).
    #[arg(long, env = "GATHERING_NODE", value_parser = node_name)]
    pub node: Option<String>,

    /// The WebSocket base URL clients reach this node at (default
    /// ws://<--listen>), told to clients whose gathering lives here.
    #[arg(long, env = "GATHERING_ADVERTISE")]
    pub advertise: Option<String>,

    /// How long a node's lease lasts without renewal; renewed every third
    /// of it. Another node takes a stopped node's gatherings after it.
    #[arg(long, env = "GATHERING_LEASE", default_value = "5s", value_parser = positive_duration)]
    pub lease: Duration,

    /// Gatherings handed to other nodes per second while draining (on
    /// SIGTERM in a cluster).
    #[arg(long, env = "GATHERING_DRAIN_RATE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub drain_rate: u32,
}

/// What `gathering-server` does besides serving.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Print a token for one member (signed with --auth-secret), e.g.
    /// `token --sub Ada --role player --gathering spring-open --ttl 1h`.
    Token {
        /// The member's id (1 to 64 characters).
        #[arg(long)]
        sub: String,
        /// Its role, which the app interprets (tournament: organizer, player, spectator).
        #[arg(long)]
        role: String,
        /// The gathering it may join, or * for any.
        #[arg(long, default_value = "*")]
        gathering: String,
        /// How long it is valid (e.g. 1h, 30m, 7d).
        #[arg(long, default_value = "1h", value_parser = positive_duration)]
        ttl: Duration,
    },
}

/// Where the admin listener listens unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8090";

fn node_name(s: &str) -> Result<String, String> {
    let fits = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if fits {
        Ok(s.to_owned())
    } else {
        Err("a node name is 1-64 characters of A-Z a-z 0-9 _ - .".into())
    }
}

/// The admin listener's address, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

fn admin_address(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|e| format!("{e} (write an address like 127.0.0.1:8090, or off)"))
}

/// The demo page in this source tree: right for `cargo run`, overridable
/// with `--web-dir` for an installed server.
pub const DEFAULT_WEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../host-wasm/www");

impl Args {
    /// The builder these arguments describe, for app `A`.
    pub fn builder<A: NativeApp>(&self) -> Builder<A> {
        let builder = Server::<A>::builder()
            .listen(self.listen)
            .admin_listen(self.admin_listen.0)
            .data_dir(&self.data_dir)
            .gathering(Config {
                idle_timeout: self.idle_timeout,
                empty_grace: self.empty_grace,
                retry_interval: self.retry_interval.into(),
                max_retry_interval: Duration::from(self.retry_interval)
                    .saturating_mul(gathering_core::RETRY_BACKOFF_CAP),
                snapshot_ops: self.snapshot_ops,
                snapshot_bytes: self.snapshot_bytes,
                max_in_flight: self.max_in_flight,
                max_connections: match self.max_connections_per_gathering {
                    0 => u32::MAX,
                    n => n,
                },
                max_ops_per_sec: self.max_ops_per_sec,
                max_gatherings: match self.max_gatherings {
                    0 => u32::MAX,
                    n => n,
                },
                op_burst: self.op_burst,
                max_sessions: self.max_sessions,
                max_presence_bytes: self.max_presence_bytes,
                presence_grace: self.presence_grace,
                ..Config::default()
            })
            .shutdown_grace(self.shutdown_grace)
            .commit_interval(self.commit_interval)
            .allowed_origins(self.allowed_origins.clone())
            .limits(Limits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
                header_timeout: self.header_timeout,
                http_timeout: self.http_timeout,
                frame_timeout: self.frame_timeout,
                ping_interval: self.ping_interval,
            })
            .max_frame_bytes(usize::try_from(self.max_frame_bytes).unwrap_or(usize::MAX));
        match (&self.cluster, &self.node) {
            (Some(url), Some(node)) => builder.cluster(ClusterOptions {
                url: url.clone(),
                node: node.clone(),
                advertise: self
                    .advertise
                    .clone()
                    .unwrap_or_else(|| format!("ws://{}", self.listen)),
                lease: self.lease,
                drain_rate: self.drain_rate,
            }),
            _ => builder,
        }
        .web_dir(&self.web_dir)
    }
}

/// A whole server binary for app `A`, named `name` in its `--help`: parses
/// the command line (every flag of `gathering-server`, each also settable
/// by its `GATHERING_*` variable), logs to stdout (`RUST_LOG`, default
/// `info`), serves until SIGINT or SIGTERM, then shuts down gracefully.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     gathering_native::cli::main::<gathering_core::tournament::Tournament>("my-server")
/// }
/// ```
pub fn main<A: NativeApp>(name: &'static str) -> ExitCode {
    let matches = Args::command().name(name).bin_name(name).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    raise_descriptor_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Token {
        sub,
        role,
        gathering,
        ttl,
    }) = &args.command
    {
        let Some(secret) = &args.auth_secret else {
            eprintln!("{name} token: give the secret with --auth-secret or GATHERING_AUTH_SECRET");
            return ExitCode::FAILURE;
        };
        return match Jwt::new(secret.as_bytes()).mint_for(sub, role, gathering, *ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{name} token: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = args.builder::<A>();
    match &args.auth_secret {
        Some(secret) => builder = builder.authenticator(Jwt::new(secret.as_bytes())),
        None if !args.listen.ip().is_loopback() && !args.open => {
            eprintln!(
                "{name}: refusing to listen on {} without --auth-secret: anyone who reaches it \
                 could act on every gathering. Give --auth-secret (or GATHERING_AUTH_SECRET), or \
                 --open to run open anyway.",
                args.listen
            );
            return ExitCode::FAILURE;
        }
        None => tracing::warn!(
            "no --auth-secret: running open, every connection may do every op in every gathering"
        ),
    }
    let served = runtime.block_on(async {
        let running = builder.start().await?;
        shutdown_signal().await;
        tracing::info!("signal received");
        running.shutdown().await;
        Ok::<_, crate::ServerError>(())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: a server's
/// connections are file descriptors, and the usual soft limit (1,024) sits
/// far below `--max-connections`, where accepting would fail instead of
/// answering 503.
fn raise_descriptor_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain calls with a valid pointer to a local.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
}

/// [`positive_duration`], shown in `--help` as it is written.
fn positive_human(s: &str) -> Result<humantime::Duration, String> {
    positive_duration(s).map(Into::into)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write durations like 24h, 90s or 300ms)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}
