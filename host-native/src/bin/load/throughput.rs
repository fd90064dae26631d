//! `throughput`: G gatherings x C clients, durable acks: ops/s,
//! forwards/s, ack latency.

use std::time::{Duration, Instant};

use crate::measure::{a_beats_b, quantile, sorted, tournament_clients};
use crate::servers::{Detection, Server};
use gathering_native::client::Reply;

pub(crate) async fn throughput(smoke: bool) {
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
