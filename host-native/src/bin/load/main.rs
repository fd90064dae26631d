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
#[cfg(feature = "jemalloc")]
#[path = "../../allocator.rs"]
mod allocator;

mod connections;
mod measure;
mod overhead;
mod replay;
mod rooms;
mod scale;
mod servers;
mod sustained;
mod throughput;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use connections::connections;
use overhead::overhead;
use replay::replay;
use scale::scale;
use sustained::sustained;
use throughput::throughput;

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
    /// `sustained` and `connections`: every client joins with a session.
    #[arg(long, global = true)]
    sessions: bool,
    /// The server processes run as cluster nodes on this PostgreSQL
    /// database (a scratch one: its gathering tables are emptied before
    /// each server starts); `sustained` then also counts the database's
    /// CPU (every process named postgres).
    #[arg(long, global = true)]
    cluster: Option<String>,
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
    /// The Rust client's `Room` against the plain `Client`: ops/s, client
    /// CPU per op, server CPU per forward.
    Rooms,
    /// All of the above.
    All,
}

fn main() {
    let args = Args::parse();
    measure::SESSIONS.store(args.sessions, std::sync::atomic::Ordering::Relaxed);
    if let Some(url) = &args.cluster {
        let _ = servers::CLUSTER.set(url.clone());
    }
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
        if matches!(args.what, What::Rooms | What::All) {
            rooms::rooms(args.smoke, args.seconds).await;
        }
    });
}
