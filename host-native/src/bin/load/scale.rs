//! `scale`: many idle gatherings: memory, spawn rate, dispersal
//! lateness, and a second cycle to see memory reused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::measure::{cpu_secs, id, quantile, rss, sorted, wait_until};
use crate::servers::{Detection, Server};
use gathering_core::GatheringId;

/// Default seconds over which `scale` makes a size fall due: 3 s, or longer
/// so that no more than 100,000 fall due per second.
pub(crate) fn default_spread(n: usize) -> f64 {
    (n as f64 / 100_000.0).max(3.0)
}

pub(crate) async fn scale(
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
