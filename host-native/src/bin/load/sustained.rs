//! `sustained`: a time window against a `gathering-server` process with
//! the state growing, 1 and 16 ops in flight per client.

use std::time::{Duration, Instant};

use crate::measure::{SESSIONS, a_beats_b, id, join, quantile, sorted, tournament_clients};
use crate::servers::ChildServer;
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_native::client::{Client, Reply};

/// What one client saw in the window.
#[derive(Default)]
pub(crate) struct Seen {
    /// Ack latencies, seconds.
    pub(crate) latencies: Vec<f64>,
    /// Forwards received per bucket of the window.
    pub(crate) forwards: Vec<u64>,
    /// Forwards received again (a seq not above the highest seen).
    pub(crate) resent: u64,
    /// Moves to a fresh tournament once this one held its most results.
    pub(crate) rollovers: u64,
}

/// A client of the tournament after `client`'s, once that one holds its most
/// results (65,536: at 16 in flight a 30 s window fills it): the state grows
/// from nothing again, and its peers follow as their ops are refused too.
pub(crate) async fn roll_over(url: &str, gi: usize, generation: u64) -> Client<Tournament> {
    let gid = id(&format!("s{gi}-{generation}"));
    let mut client = join(url, &gid).await;
    for name in ["a", "b"] {
        // The first of the peers here registers them; the rest are told so.
        let _ = client
            .op(TournamentOp::RegisterPlayer { name: name.into() })
            .await;
    }
    client
}

pub(crate) async fn sustained(smoke: bool, seconds: u64, bucket: u64, shapes: &[String]) {
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
    let sessions = if SESSIONS.load(std::sync::atomic::Ordering::Relaxed) {
        ", each client with a session"
    } else {
        ""
    };
    println!(
        "\n== sustained: {secs} s of record_result against a gathering-server process (state grows: every result is kept), postcard{sessions}"
    );
    for &(g, c) in &shapes {
        for window in [1usize, 16] {
            sustained_one(g, c, window, secs, bucket).await;
        }
    }
}

pub(crate) async fn sustained_one(g: usize, c: usize, window: usize, secs: u64, bucket: u64) {
    let server = ChildServer::spawn("sustained");
    let clients = tournament_clients(&server.url, "s", g, c).await;
    let buckets = secs.div_ceil(bucket) as usize;
    let cpu_before = server.cpu_split();
    let database_before = crate::servers::database_cpu();
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
    let database = crate::servers::database_cpu() - database_before;
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
    let database = if crate::servers::CLUSTER.get().is_some() {
        format!(
            "; PostgreSQL CPU {database:.2} s = {:.2} us per delivered forward",
            database * us_per_forward
        )
    } else {
        String::new()
    };
    println!(
        "{g} x {c}, {window} in flight: forwards/s per {bucket} s [{}]; last/first {:.2}; {:.0} forwards/s overall; ack p50 {:.2} ms, p99 {:.2} ms; server CPU {:.2} s = {:.2} us per delivered forward ({:.2} user + {:.2} system; {:.2} cores){database}; re-sent {resent} ({:.2} % of delivered); storage over the server's life: {:.1} ops per commit, {:.0} B written per op, {:.0} B of it to disk (pages); tournaments filled and rolled over: {}",
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
