//! `gathering-load`: the load generator of BENCHMARKS.md. It starts a real
//! server in this process (loopback, storage in a temporary directory) and
//! drives it with the Rust client over real WebSockets, or with `touch` for
//! gatherings that need no socket. Every loop is bounded in count and time.
//!
//! ```text
//! gathering-load overhead     # messages/s through one gathering per detection strategy, lateness
//! gathering-load throughput   # G x C clients, durable acks: ops/s, forwards/s, ack latency
//! gathering-load sustained    # 30 s against a gathering-server process, state growing: forwards/s per 5 s, CPU per forward
//! gathering-load replay       # spawn time of a gathering with the longest log tail compaction allows
//! gathering-load scale        # 10k / 100k / 1M idle gatherings: RSS, spawn rate, lateness, reuse
//! gathering-load connections  # 10k idle gatherings with one connection each: server RSS
//! gathering-load all --smoke  # everything, tiny: what CI runs
//! ```
//!
//! `overhead` compares stale-detection strategies only when built with the
//! `bench` feature (`--features bench`); without it, it measures the
//! product's own (`exact`) alone.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

// The server's allocator, so that what runs in process measures as the
// server would.
#[path = "../allocator.rs"]
mod allocator;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use gathering_core::protocol::{ClientMsg, encode};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Config, Encoding, Frame, GatheringId};
#[cfg(feature = "bench")]
use gathering_native::Detection;
use gathering_native::Running;
use gathering_native::client::{Client, Reply};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "gathering-load",
    about = "Benchmarks of the gathering server over loopback"
)]
struct Args {
    /// Tiny sizes: seconds in all, for CI (figures are meaningless).
    #[arg(long, global = true)]
    smoke: bool,
    /// Sizes for `scale` (default 10000,100000,1000000).
    #[arg(long, global = true, value_delimiter = ',')]
    gatherings: Vec<usize>,
    /// Cycles for `scale` (spawn all, all disperse), to see that memory
    /// stops growing.
    #[arg(long, global = true, default_value_t = 2)]
    cycles: usize,
    /// Seconds over which `scale` makes each size fall due (default: 3, or
    /// as long as keeps it to 100,000 a second).
    #[arg(long, global = true)]
    spread: Option<f64>,
    /// Seconds `sustained` runs each shape for.
    #[arg(long, global = true, default_value_t = 30)]
    seconds: u64,
    /// Seconds per bucket of `sustained`'s forwards (last/first compares
    /// the last bucket with the first).
    #[arg(long, global = true, default_value_t = 5)]
    bucket: u64,
    /// Shapes for `sustained`, as GxC (default 100x4,1000x4).
    #[arg(long, global = true, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Where `scale` writes the lateness of every dispersal of its last
    /// cycle, in seconds, one per line in the order they happened (to see
    /// their course over time); with several sizes, one file each, with
    /// the size as its extension.
    #[arg(long, global = true)]
    lateness_out: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Stale-detection overhead end to end, and real-clock dispersal lateness.
    Overhead,
    /// Acknowledged ops and delivered forwards for G gatherings x C clients.
    Throughput,
    /// A time window against a separate `gathering-server` process with
    /// the state growing, 1 and 16 ops in flight per client: delivered
    /// forwards per 5 s, ack latency, server CPU per delivered forward,
    /// forwards re-sent.
    Sustained,
    /// Many idle gatherings: memory, spawn rate, lateness, a second cycle.
    Scale,
    /// Loading a gathering from redb: its snapshot and the longest log
    /// tail the default compaction leaves, replayed.
    Replay,
    /// Memory of idle gatherings holding one WebSocket connection each,
    /// in a separate `gathering-server` process.
    Connections,
    /// All of the above.
    All,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if std::env::var_os("GATHERING_LOAD_CHILD").is_none() {
        println!(
            "machine: {} cores; build: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if cfg!(debug_assertions) {
                "debug (use --release for figures)"
            } else {
                "release"
            }
        );
    }
    rt.block_on(async {
        if matches!(args.what, What::Overhead | What::All) {
            overhead(args.smoke).await;
        }
        if matches!(args.what, What::Throughput | What::All) {
            throughput(args.smoke).await;
        }
        if matches!(args.what, What::Sustained | What::All) {
            sustained(args.smoke, args.seconds, args.bucket, &args.shapes).await;
        }
        if matches!(args.what, What::Replay | What::All) {
            replay(args.smoke);
        }
        if matches!(args.what, What::Scale | What::All) {
            scale(
                args.smoke,
                &args.gatherings,
                args.cycles,
                args.spread,
                args.lateness_out.as_deref(),
            )
            .await;
        }
        if matches!(args.what, What::Connections | What::All) {
            connections(args.smoke).await;
        }
    });
}

/// The product's detection, the only one in a build without `bench`.
#[cfg(not(feature = "bench"))]
#[derive(Clone, Copy)]
enum Detection {
    Exact,
}

/// A server on a free loopback port with its own temporary data directory,
/// removed on drop.
struct Server {
    running: Option<Running>,
    dir: PathBuf,
    url: String,
    /// Every idle or empty dispersal's lateness, in seconds (the metrics'
    /// histogram has buckets only; percentiles want every sample).
    lateness: Arc<Mutex<Vec<f64>>>,
}

impl Server {
    async fn start(idle: Duration, detection: Detection) -> Server {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gathering-load-{}-{n}", std::process::id()));
        let lateness = Arc::new(Mutex::new(Vec::new()));
        let samples = lateness.clone();
        let builder = gathering_native::Server::<Tournament>::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .data_dir(&dir)
            // Every client of a load comes from 127.0.0.1.
            .limits(gathering_native::Limits {
                max_connections: 0,
                max_per_address: 0,
                ..gathering_native::Limits::default()
            })
            .gathering(Config {
                idle_timeout: idle,
                ..Config::default()
            })
            .on_dispersed(move |d| {
                if d.reason != gathering_core::DisperseReason::Shutdown {
                    samples.lock().unwrap().push(d.late.as_secs_f64());
                }
            });
        #[cfg(feature = "bench")]
        let builder = builder.detection(detection);
        #[cfg(not(feature = "bench"))]
        let Detection::Exact = detection;
        let running = builder.start().await.expect("server starts");
        let url = format!("ws://{}", running.addr);
        Server {
            running: Some(running),
            dir,
            url,
            lateness,
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn live(&self) -> i64 {
        self.running().metrics.gatherings_live.get()
    }

    fn take_lateness(&self) -> Vec<f64> {
        std::mem::take(&mut *self.lateness.lock().unwrap())
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of sorted `v`.
fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time this process has used, seconds (user + system).
fn cpu_secs() -> f64 {
    let (user, system) = cpu_split_of("self");
    user + system
}

/// CPU time process `pid` (or `self`) has used, seconds: in user space, and
/// in the kernel on its behalf (its syscalls, and on loopback the TCP
/// receive work of whatever it sends to).
fn cpu_split_of(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks of 1/100 s on Linux.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

async fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not done within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- overhead

#[cfg(feature = "bench")]
const DETECTIONS: &[(Detection, &str)] = &[
    (Detection::Off, "none"),
    (Detection::Exact, "exact"),
    (Detection::RearmPerMessage, "rearm"),
];
#[cfg(not(feature = "bench"))]
const DETECTIONS: &[(Detection, &str)] = &[(Detection::Exact, "exact")];

/// Sends `n` postcard acks on one connection as fast as the socket takes
/// them, 64 to a write (the client disables Nagle's algorithm, which used
/// to gather them), then a fetch; returns messages per second once the
/// fetch answers (the gathering handles its mailbox in order, so all were
/// processed).
async fn pump(url: &str, n: u64) -> f64 {
    let g = id("overhead");
    let mut client: Client<Tournament> =
        Client::connect(url, &g, Encoding::Postcard).await.unwrap();
    let Frame::Binary(ack) = encode(
        &ClientMsg::<TournamentOp>::Ack { seq: 0 },
        Encoding::Postcard,
    )
    .unwrap() else {
        unreachable!()
    };
    client.fetch().await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        client
            .feed_raw(Message::binary(ack.to_vec()))
            .await
            .unwrap();
        if i % 64 == 63 {
            client.flush().await.unwrap();
        }
    }
    client.fetch().await.unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    client.close().await;
    rate
}

async fn overhead(smoke: bool) {
    let (n, rounds) = if smoke { (2_000, 1) } else { (200_000, 7) };
    let mut rates = vec![Vec::new(); DETECTIONS.len()];
    for _ in 0..rounds {
        for (i, (detection, _)) in DETECTIONS.iter().enumerate() {
            let server = Server::start(Duration::from_secs(3600), *detection).await;
            rates[i].push(pump(&server.url, n).await);
            server.stop().await;
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!(
        "\n== overhead: {n} postcard acks over one WebSocket to one gathering, median of {rounds} interleaved rounds"
    );
    println!("{:<8} {:>12} {:>9}", "strategy", "messages/s", "vs none");
    for ((_, name), m) in DETECTIONS.iter().zip(&medians) {
        println!(
            "{name:<8} {m:>12.0} {:>8.2}%",
            (m / medians[0] - 1.0) * 100.0
        );
    }

    // Real-clock lateness: gatherings touched at random instants over
    // `spread`, idle timeout `idle`; every one is measured.
    let (count, idle, spread) = if smoke {
        (50, Duration::from_millis(300), Duration::from_millis(200))
    } else {
        (10_000, Duration::from_secs(2), Duration::from_secs(1))
    };
    println!(
        "\n== dispersal lateness, real clock: {count} gatherings falling due over {spread:?} (idle {idle:?})"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}",
        "strategy", "p50 ms", "p99 ms", "max ms", "early"
    );
    for &(detection, name) in DETECTIONS.iter().filter(|(_, name)| *name != "none") {
        let server = Server::start(idle, detection).await;
        let start = Instant::now();
        for i in 0..count {
            let at = spread.mul_f64(i as f64 / count as f64);
            tokio::time::sleep_until((start + at).into()).await;
            server
                .running()
                .touch(id(&format!("late-{i}")))
                .await
                .unwrap();
        }
        wait_until("dispersal", idle + spread + Duration::from_secs(30), || {
            server.live() == 0 && server.running().metrics.gatherings_spawned.get() == count
        })
        .await;
        let l = sorted(server.take_lateness());
        // The host records lateness as now - deadline, clamped at zero only
        // when the core dispersed: a negative value cannot be recorded, and
        // the core refuses to disperse before the deadline.
        println!(
            "{name:<8} {:>10.3} {:>10.3} {:>10.3} {:>10}",
            quantile(&l, 0.5) * 1e3,
            quantile(&l, 0.99) * 1e3,
            quantile(&l, 1.0) * 1e3,
            0
        );
        server.stop().await;
    }
    println!("sweep    (every 60 s: lateness uniform in 0..60 s; see the bookkeeping bench)");
}

// -------------------------------------------------------------- throughput

async fn throughput(smoke: bool) {
    let shapes: &[(usize, usize, u64)] = if smoke {
        &[(1, 2, 200), (4, 4, 50)]
    } else {
        // (gatherings, clients each, ops per client)
        &[(1, 2, 20_000), (100, 4, 500), (1000, 4, 60)]
    };
    let window = 16; // ops in flight per client
    println!(
        "\n== throughput: G gatherings x C clients, postcard, {window} ops in flight per client, ack after durable commit"
    );
    println!(
        "{:>10} {:>12} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "G x C", "ops acked/s", "forwards/s", "p50 ms", "p99 ms", "commits", "ops/commit"
    );
    for &(g, c, per_client) in shapes {
        let server = Server::start(Duration::from_secs(3600), Detection::Exact).await;
        let clients = tournament_clients(&server.url, "t", g, c).await;
        let commits_before = server.running().metrics.storage_commits.get();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for mut client in clients {
            tasks.push(tokio::spawn(async move {
                let op = a_beats_b();
                let mut sent_at = std::collections::HashMap::new();
                let mut latencies = Vec::with_capacity(per_client as usize);
                let (mut sent, mut forwards) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(120);
                while (latencies.len() as u64) < per_client && Instant::now() < deadline {
                    while sent < per_client && sent_at.len() < window {
                        let rid = client.submit(op.clone()).await.unwrap();
                        sent_at.insert(rid, Instant::now());
                        sent += 1;
                    }
                    match client.reply().await.unwrap() {
                        Reply::Acked { id, .. } => {
                            if let Some(t) = sent_at.remove(&id) {
                                latencies.push(t.elapsed().as_secs_f64());
                            }
                        }
                        Reply::Forward { .. } => forwards += 1,
                        Reply::Rejected { message, .. } => panic!("op refused: {message}"),
                        Reply::Dispersed { .. } => panic!("dispersed under load"),
                    }
                }
                (latencies, forwards, client)
            }));
        }
        let mut latencies = Vec::new();
        let mut clients = Vec::new();
        let mut forwards = 0u64;
        for t in tasks {
            let (l, f, client) = t.await.unwrap();
            latencies.extend(l);
            forwards += f;
            clients.push(client);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let ops = latencies.len() as f64;
        // Forwards counted as received by clients before they finished;
        // those still in flight at the end are not counted.
        let forwards = forwards as f64;
        let commits = server.running().metrics.storage_commits.get() - commits_before;
        let l = sorted(latencies);
        println!(
            "{:>10} {:>12.0} {:>14.0} {:>10.2} {:>10.2} {:>10} {:>12.1}",
            format!("{g} x {c}"),
            ops / elapsed,
            forwards / elapsed,
            quantile(&l, 0.5) * 1e3,
            quantile(&l, 0.99) * 1e3,
            commits,
            ops / commits.max(1) as f64
        );
        for client in clients {
            client.close().await;
        }
        server.stop().await;
    }
}

// ------------------------------------------------------------------- scale

/// Default seconds over which `scale` makes a size fall due: 3 s, or longer
/// so that no more than 100,000 fall due per second.
fn default_spread(n: usize) -> f64 {
    (n as f64 / 100_000.0).max(3.0)
}

async fn scale(
    smoke: bool,
    sizes: &[usize],
    cycles: usize,
    spread: Option<f64>,
    lateness_out: Option<&std::path::Path>,
) {
    let sizes: &[usize] = match (smoke, sizes.is_empty()) {
        (true, _) => &[2_000],
        (false, true) => &[10_000, 100_000, 1_000_000],
        (false, false) => sizes,
    };
    let child = std::env::var_os("GATHERING_LOAD_CHILD").is_some();
    if !child {
        println!(
            "\n== scale: idle gatherings without connections, spawned with `touch` over the spread (or as fast as the server takes them), then touched again evenly over the spread so that they fall due evenly; {cycles} cycles each, each size in a fresh process"
        );
        println!(
            "{:>9} {:>6} {:>11} {:>10} {:>12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "gatherings",
            "cycle",
            "spawned/s",
            "B/gather",
            "RSS MiB",
            "spread s",
            "due/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "RSS after",
            "cpu us/d"
        );
    }
    if sizes.len() > 1 {
        // Memory freed by one size would be reused by the next and make it
        // look cheaper: every size gets a process of its own.
        let exe = std::env::current_exe().unwrap();
        for n in sizes {
            let mut command = std::process::Command::new(&exe);
            command
                .args(["scale", "--gatherings", &n.to_string()])
                .args(["--cycles", &cycles.to_string()])
                .env("GATHERING_LOAD_CHILD", "1");
            if let Some(spread) = spread {
                command.args(["--spread", &spread.to_string()]);
            }
            if let Some(path) = lateness_out {
                command
                    .arg("--lateness-out")
                    .arg(path.with_extension(n.to_string()));
            }
            let status = command.status().unwrap();
            assert!(status.success(), "scale {n}: {status}");
        }
        return;
    }
    for &n in sizes {
        let spread = Duration::from_secs_f64(spread.unwrap_or_else(|| default_spread(n)));
        // Long enough for every spawn to finish and every gathering to be
        // touched again before the first falls due (checked below).
        let idle = spread + Duration::from_secs(3) + Duration::from_micros(n as u64 * 50);
        let server = Server::start(idle, Detection::Exact).await;
        let ids: Arc<Vec<GatheringId>> = Arc::new((0..n).map(|i| id(&format!("g{i}"))).collect());
        for cycle in 1..=cycles {
            let before = rss();
            let start = Instant::now();
            // Spawns paced over the spread too (where spawning keeps up), so
            // that memory is measured at the pace before this bench made
            // the deadlines even: a burst of spawns also grows the blocking
            // pool that loads them.
            for (i, g) in ids.iter().enumerate() {
                if i % 1000 == 0 {
                    let at = spread.mul_f64(i as f64 / n as f64);
                    tokio::time::sleep_until((start + at).into()).await;
                }
                server.running().touch(g.clone()).await.unwrap();
            }
            let spawned_target = (cycle * n) as u64;
            wait_until("spawn", Duration::from_secs(600), || {
                server.running().metrics.gatherings_spawned.get() >= spawned_target
            })
            .await;
            let spawn_secs = start.elapsed().as_secs_f64();
            let live = server.live().max(1) as u64;
            let held = rss();
            let per = held.saturating_sub(before) as f64 / live as f64;
            // Deadlines follow the last message, so touching every gathering
            // again, evenly over `spread`, makes them fall due as evenly
            // (rather than as unevenly as spawns complete). Paced ten
            // touches at a time, by the thread's own sleep: tokio's timer
            // counts whole milliseconds, and a millisecond's worth of
            // touches at once would fall due as a burst.
            //
            // The timers armed by the first touches fall due first, as
            // harmless wake-ups; a pause keeps them apart from the
            // dispersals measured.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let touched = Instant::now();
            for (i, g) in ids.iter().enumerate() {
                if i % 10 == 0 {
                    let at = touched + spread.mul_f64(i as f64 / n as f64);
                    // This is the load generator's own thread, not a worker.
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                server.running().touch(g.clone()).await.unwrap();
            }
            let touch_secs = touched.elapsed().as_secs_f64();
            assert!(
                server.running().metrics.gatherings_spawned.get() == spawned_target
                    && server.live() == live as i64,
                "gatherings fell due before they were touched again: idle timeout {idle:?} too short"
            );
            // CPU per dispersal: from the first one on (nothing else runs).
            wait_until("first dispersal", idle + Duration::from_secs(600), || {
                server.live() < live as i64
            })
            .await;
            let cpu_before = cpu_secs();
            wait_until("dispersal", idle + Duration::from_secs(600), || {
                server.live() == 0
            })
            .await;
            let cpu_per = (cpu_secs() - cpu_before) / live as f64;
            let l = server.take_lateness();
            if let Some(path) = lateness_out {
                let text: String = l.iter().map(|v| format!("{v}\n")).collect();
                std::fs::write(path, text).unwrap();
            }
            let l = sorted(l);
            // Let the allocator settle before reading what is left.
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!(
                "{:>9} {:>6} {:>11.0} {:>10.0} {:>12.1} {:>9.1} {:>10.0} {:>10.3} {:>10.3} {:>10.3} {:>12.1} {:>10.1}",
                n,
                cycle,
                n as f64 / spawn_secs,
                per,
                held as f64 / 1048576.0,
                touch_secs,
                n as f64 / touch_secs,
                quantile(&l, 0.5) * 1e3,
                quantile(&l, 0.99) * 1e3,
                quantile(&l, 1.0) * 1e3,
                rss() as f64 / 1048576.0,
                cpu_per * 1e6
            );
        }
        server.stop().await;
    }
}

/// The op every load of this file sends: `a` beat `b` (the tournament keeps
/// every result, so the state grows with each).
fn a_beats_b() -> TournamentOp {
    TournamentOp::RecordResult {
        a: "a".into(),
        b: "b".into(),
        winner: Some("a".into()),
    }
}

/// `g` tournaments named `{prefix}{i}` with `c` postcard clients each, the
/// first of which registers players `a` and `b`; returns once the
/// registrations' forwards have settled.
async fn tournament_clients(
    url: &str,
    prefix: &str,
    g: usize,
    c: usize,
) -> Vec<Client<Tournament>> {
    let mut clients = Vec::new();
    for gi in 0..g {
        let gid = id(&format!("{prefix}{gi}"));
        for ci in 0..c {
            let mut client: Client<Tournament> = Client::connect(url, &gid, Encoding::Postcard)
                .await
                .unwrap();
            if ci == 0 {
                for name in ["a", "b"] {
                    client
                        .op(TournamentOp::RegisterPlayer { name: name.into() })
                        .await
                        .unwrap();
                }
            }
            clients.push(client);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    clients
}

// --------------------------------------------------------------- sustained

/// What one client saw in the window.
#[derive(Default)]
struct Seen {
    /// Ack latencies, seconds.
    latencies: Vec<f64>,
    /// Forwards received per bucket of the window.
    forwards: Vec<u64>,
    /// Forwards received again (a seq not above the highest seen).
    resent: u64,
    /// Moves to a fresh tournament once this one held its most results.
    rollovers: u64,
}

/// A client of the tournament after `client`'s, once that one holds its most
/// results (65,536: at 16 in flight a 30 s window fills it): the state grows
/// from nothing again, and its peers follow as their ops are refused too.
async fn roll_over(url: &str, gi: usize, generation: u64) -> Client<Tournament> {
    let gid = id(&format!("s{gi}-{generation}"));
    let mut client: Client<Tournament> = Client::connect(url, &gid, Encoding::Postcard)
        .await
        .unwrap();
    for name in ["a", "b"] {
        // The first of the peers here registers them; the rest are told so.
        let _ = client
            .op(TournamentOp::RegisterPlayer { name: name.into() })
            .await;
    }
    client
}

async fn sustained(smoke: bool, seconds: u64, bucket: u64, shapes: &[String]) {
    let (secs, bucket, defaults): (u64, u64, &[(usize, usize)]) = if smoke {
        (2, 1, &[(4, 2)])
    } else {
        (seconds, bucket.max(1), &[(100, 4), (1000, 4)])
    };
    let shapes: Vec<(usize, usize)> = if shapes.is_empty() {
        defaults.to_vec()
    } else {
        shapes
            .iter()
            .map(|s| {
                let (g, c) = s.split_once('x').expect("shapes look like 100x4");
                (g.parse().unwrap(), c.parse().unwrap())
            })
            .collect()
    };
    println!(
        "\n== sustained: {secs} s of record_result against a gathering-server process (state grows: every result is kept), postcard"
    );
    for &(g, c) in &shapes {
        for window in [1usize, 16] {
            sustained_one(g, c, window, secs, bucket).await;
        }
    }
}

async fn sustained_one(g: usize, c: usize, window: usize, secs: u64, bucket: u64) {
    let server = ChildServer::spawn("sustained");
    let clients = tournament_clients(&server.url, "s", g, c).await;
    let buckets = secs.div_ceil(bucket) as usize;
    let cpu_before = server.cpu_split();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let op = a_beats_b();
            let mut seen = Seen {
                forwards: vec![0; buckets],
                ..Seen::default()
            };
            let mut sent_at = std::collections::HashMap::new();
            let mut highest = 0u64;
            while Instant::now() < end {
                while sent_at.len() < window {
                    let rid = client.submit(op.clone()).await.unwrap();
                    sent_at.insert(rid, Instant::now());
                }
                let reply = tokio::time::timeout_at(end.into(), client.reply()).await;
                let Ok(reply) = reply else { break };
                match reply.unwrap() {
                    Reply::Acked { id, .. } => {
                        if let Some(t) = sent_at.remove(&id) {
                            seen.latencies.push(t.elapsed().as_secs_f64());
                        }
                    }
                    Reply::Forward { seq, .. } => {
                        if seq <= highest {
                            seen.resent += 1;
                        } else {
                            highest = seq;
                            let b = (start.elapsed().as_secs() / bucket) as usize;
                            if let Some(n) = seen.forwards.get_mut(b) {
                                *n += 1;
                            }
                        }
                    }
                    Reply::Rejected { code, .. } if code == "limit_reached" => {
                        seen.rollovers += 1;
                        client = roll_over(&url, i / c, seen.rollovers).await;
                        sent_at.clear();
                        highest = 0;
                    }
                    Reply::Rejected { message, .. } => panic!("op refused: {message}"),
                    Reply::Dispersed { .. } => panic!("dispersed under load"),
                }
            }
            (seen, client)
        }));
    }
    let mut latencies = Vec::new();
    let mut per_bucket = vec![0u64; buckets];
    let mut resent = 0;
    let mut rollovers = 0;
    let mut clients = Vec::new();
    for t in tasks {
        let (seen, client) = t.await.unwrap();
        latencies.extend(seen.latencies);
        for (total, n) in per_bucket.iter_mut().zip(seen.forwards) {
            *total += n;
        }
        resent += seen.resent;
        rollovers += seen.rollovers;
        clients.push(client);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = server.cpu_split();
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let cpu = user + system;
    let metrics = server.metrics();
    let counter = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (commits, logged, bytes) = (
        counter("storage_commits_total"),
        counter("storage_logged_total"),
        counter("storage_bytes_total"),
    );
    let delivered: u64 = per_bucket.iter().sum();
    // Seconds of CPU to microseconds per delivered forward.
    let us_per_forward = 1e6 / delivered.max(1) as f64;
    let l = sorted(latencies);
    let rates: Vec<String> = per_bucket
        .iter()
        .map(|n| format!("{:.0}", *n as f64 / bucket as f64))
        .collect();
    let first = per_bucket.first().copied().unwrap_or(0) as f64;
    let last = per_bucket.last().copied().unwrap_or(0) as f64;
    println!(
        "{g} x {c}, {window} in flight: forwards/s per {bucket} s [{}]; last/first {:.2}; {:.0} forwards/s overall; ack p50 {:.2} ms, p99 {:.2} ms; server CPU {:.2} s = {:.2} us per delivered forward ({:.2} user + {:.2} system; {:.2} cores); re-sent {resent} ({:.2} % of delivered); storage over the server's life: {:.1} ops per commit, {:.0} B written per op, {:.0} B of it to disk (pages); tournaments filled and rolled over: {}",
        rates.join(", "),
        last / first.max(1.0),
        delivered as f64 / elapsed,
        quantile(&l, 0.5) * 1e3,
        quantile(&l, 0.99) * 1e3,
        cpu,
        cpu * us_per_forward,
        user * us_per_forward,
        system * us_per_forward,
        cpu / elapsed,
        resent as f64 * 100.0 / delivered.max(1) as f64,
        logged / commits.max(1.0),
        bytes / logged.max(1.0),
        server.disk_bytes() as f64 / logged.max(1.0),
        rollovers / c as u64
    );
    for client in clients {
        client.close().await;
    }
    server.stop();
}

// ------------------------------------------------------------------ replay

/// How long loading a gathering takes when its log tail is as long as the
/// default compaction allows (one op short of a snapshot), over a snapshot
/// of a state with `matches` results, from redb on disk.
fn replay(smoke: bool) {
    use gathering_core::{Commit, DEFAULT_SNAPSHOT_OPS, Gathering, LogEntry, commit::encode_entry};
    use gathering_native::{RedbStore, Store, Write};
    let sizes: &[usize] = if smoke {
        &[0, 100]
    } else {
        // The largest stays below the 65,536 results a tournament holds, tail included.
        &[0, 5_000, 20_000]
    };
    let rounds = if smoke { 3 } else { 21 };
    println!(
        "\n== replay: load a gathering from redb = its snapshot + the longest log tail the default compaction leaves (1,023 ops, or as many as the snapshot's bytes), one commit per op, replayed; median of {rounds}"
    );
    println!(
        "{:>10} {:>14} {:>10} {:>12} {:>12} {:>12}",
        "results", "snapshot B", "log ops", "log B", "load ms", "restore ms"
    );
    for &matches in sizes {
        let dir =
            std::env::temp_dir().join(format!("gathering-load-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = RedbStore::open(&dir, "tournament").unwrap();
        let gid = id("replayed");
        let mut state = Tournament::default();
        let by = &gathering_core::Member::open(gathering_core::ConnId(1));
        use gathering_core::App;
        for name in ["a", "b"] {
            state
                .apply(by, &TournamentOp::RegisterPlayer { name: name.into() })
                .unwrap();
        }
        let result = a_beats_b();
        for _ in 0..matches {
            state.apply(by, &result).unwrap();
        }
        let seq = 2 + matches as u64;
        let snapshot = postcard::to_allocvec(&state).unwrap();
        let snapshot_bytes = snapshot.len();
        let write = |commit| Write {
            id: gid.clone(),
            commit,
        };
        store
            .commit(&[write(Commit {
                seq,
                log: Vec::new(),
                snapshot: Some(snapshot),
            })])
            .unwrap();
        // A snapshot is written once both bounds are passed: 1,024 ops,
        // and as many log bytes as the last snapshot.
        let entry_len = encode_entry(by, &result).unwrap().len() as u64;
        let tail = (u64::from(DEFAULT_SNAPSHOT_OPS) - 1).max(
            (snapshot_bytes as u64)
                .div_ceil(entry_len)
                .saturating_sub(1),
        );
        let log: Vec<LogEntry> = (1..=tail)
            .map(|i| LogEntry {
                seq: seq + i,
                bytes: encode_entry(by, &result).unwrap(),
            })
            .collect();
        let log_bytes: usize = log.iter().map(|e| e.bytes.len()).sum();
        // One commit per op, as one op in flight makes them: the most
        // journal rows a tail of this length can take.
        for entry in log {
            let seq = entry.seq;
            store
                .commit(&[write(Commit {
                    seq,
                    log: vec![entry],
                    snapshot: None,
                })])
                .unwrap();
        }
        let (mut loads, mut restores) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let loaded = store.load(&gid).unwrap();
            loads.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let g = Gathering::<Tournament>::restore(
                gid.clone(),
                Config::default(),
                gathering_core::Instant::ZERO,
                &loaded,
            )
            .unwrap();
            restores.push(t.elapsed().as_secs_f64());
            assert_eq!(g.seq(), seq + tail);
        }
        println!(
            "{matches:>10} {snapshot_bytes:>14} {tail:>10} {log_bytes:>12} {:>12.3} {:>12.3}",
            median(loads) * 1e3,
            median(restores) * 1e3
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ------------------------------------------------------------- connections

/// Resident memory of process `pid`, bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A `gathering-server` process beside this binary, on a free loopback port
/// with its own data directory: the shape users run.
struct ChildServer {
    child: std::process::Child,
    dir: PathBuf,
    url: String,
    admin: String,
}

impl ChildServer {
    fn spawn(what: &str) -> ChildServer {
        use std::io::BufRead;
        let exe = std::env::current_exe()
            .unwrap()
            .with_file_name("gathering-server");
        let dir =
            std::env::temp_dir().join(format!("gathering-load-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = std::process::Command::new(&exe)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            // Every client of a load comes from 127.0.0.1.
            .args([
                "--max-connections",
                "0",
                "--max-connections-per-address",
                "0",
                "--max-ops-per-sec",
                "0",
                "--max-connections-per-gathering",
                "0",
                "--max-gatherings",
                "0",
            ])
            .env("RUST_LOG", "warn,gathering_native::server=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it: cargo build --release -p gathering-native)",
                    exe.display()
                )
            });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let field = |line: &str, name: &str| {
            Some(
                line.split(name)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string(),
            )
        };
        let (addr, admin) = loop {
            let line = lines.next().expect("server prints its address").unwrap();
            if let (Some(addr), Some(admin)) = (field(&line, " addr="), field(&line, " admin=")) {
                break (addr, admin);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ChildServer {
            child,
            dir,
            url: format!("ws://{addr}"),
            admin,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time so far, seconds: user, system.
    fn cpu_split(&self) -> (f64, f64) {
        cpu_split_of(&self.pid().to_string())
    }

    /// Bytes it has sent to storage so far (`write_bytes` of
    /// `/proc/PID/io`: whole pages, as redb rewrites them, not the bytes
    /// it was asked to make durable).
    fn disk_bytes(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Its `/metrics` text.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.admin) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connections(smoke: bool) {
    let n = if smoke { 200 } else { 10_000 };
    let server = ChildServer::spawn("conn");
    let url = server.url.clone();
    let pid = server.pid();
    // Warm up allocator and runtime with one connection first.
    let warm: Client<Tournament> = Client::connect(&url, &id("warm"), Encoding::Postcard)
        .await
        .unwrap();
    let before = rss_of(pid);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c: Client<Tournament> =
            Client::connect(&url, &id(&format!("c{i}")), Encoding::Postcard)
                .await
                .unwrap();
        // The answer proves the gathering is live and holds the connection.
        c.fetch().await.unwrap();
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_of(pid);
    println!(
        "\n== connections: {n} idle gatherings holding one WebSocket each, gathering-server process RSS"
    );
    println!(
        "RSS before {:.1} MiB, after {:.1} MiB: {:.0} B per gathering with its connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / n as f64
    );
    drop(clients);
    drop(warm);
    server.stop();
}
