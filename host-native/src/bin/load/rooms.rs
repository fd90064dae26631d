//! `rooms`: what the Rust client's `Room` (session, queue, resend,
//! in-order delivery, batched acks) costs against the plain `Client` with
//! a session, both against a separate `gathering-server` process, G x C,
//! 1 and 16 ops in flight per client, in interleaved rounds: ops/s, this
//! process's CPU per op, the server's CPU per forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::measure::{a_beats_b, id};
use crate::servers::ChildServer;
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Encoding, SessionId};
use gathering_native::client::{Client, Reply, Room, RoomOptions};

/// This process's CPU seconds so far.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) async fn rooms(smoke: bool, seconds: u64) {
    let (g, c, secs, rounds) = if smoke {
        (4, 2, 1, 1)
    } else {
        (100, 4, seconds.min(15), 2)
    };
    println!(
        "\n== rooms: the Rust Room against the plain Client with a session, {g} x {c}, {secs} s windows, {rounds} interleaved rounds, postcard"
    );
    let server = ChildServer::spawn("rooms");
    for round in 0..rounds {
        for window in [1usize, 16] {
            for room in [false, true] {
                let tag = format!("{}{window}r{round}", if room { "room" } else { "client" });
                one(&server, &tag, g, c, window, secs, room).await;
            }
        }
    }
    server.stop();
}

async fn one(
    server: &ChildServer,
    tag: &str,
    g: usize,
    c: usize,
    window: usize,
    secs: u64,
    room: bool,
) {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for gi in 0..g {
        let gid = id(&format!("{tag}-{gi}"));
        for ci in 0..c {
            let session = SessionId::parse(&format!(
                "{tag}-{}",
                SESSIONS.fetch_add(1, Ordering::Relaxed)
            ))
            .unwrap();
            let (url, gid, acked) = (server.url.clone(), gid.clone(), acked.clone());
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Instant>();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            ready.push((ready_rx, go_tx));
            tasks.push(tokio::spawn(async move {
                let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
                if room {
                    let options = RoomOptions {
                        encoding: Encoding::Postcard,
                        session: Some(session),
                        ..RoomOptions::default()
                    };
                    let mut r = Room::<Tournament>::join(&url, &gid, options).unwrap();
                    if ci == 0 {
                        for name in ["a", "b"] {
                            let _ = r.op(register(name)).await;
                        }
                    }
                    let sender = r.sender();
                    // The events are read as an app would, on their own task.
                    let reader = tokio::spawn(async move { while r.next().await.is_some() {} });
                    let _ = ready_tx.send(());
                    let end = go_rx.await.unwrap();
                    let workers: Vec<_> = (0..window)
                        .map(|_| {
                            let (sender, acked) = (sender.clone(), acked.clone());
                            tokio::spawn(async move {
                                while Instant::now() < end {
                                    if sender.op(a_beats_b()).await.is_ok() {
                                        acked.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            })
                        })
                        .collect();
                    for w in workers {
                        let _ = w.await;
                    }
                    drop(sender);
                    reader.abort();
                } else {
                    let mut client = Client::<Tournament>::connect_session(
                        &url,
                        &gid,
                        Encoding::Postcard,
                        &session,
                    )
                    .await
                    .unwrap();
                    if ci == 0 {
                        for name in ["a", "b"] {
                            let _ = client.op(register(name)).await;
                        }
                    }
                    let _ = ready_tx.send(());
                    let end = go_rx.await.unwrap();
                    let mut in_flight = 0;
                    loop {
                        let now = Instant::now();
                        while in_flight < window && now < end {
                            client.submit(a_beats_b()).await.unwrap();
                            in_flight += 1;
                        }
                        if in_flight == 0 {
                            break;
                        }
                        match client.reply().await.unwrap() {
                            Reply::Acked { .. } => {
                                in_flight -= 1;
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Reply::Rejected { id: Some(_), .. } => in_flight -= 1,
                            _ => {}
                        }
                    }
                    client.close().await;
                }
            }));
        }
    }
    let mut gos = Vec::new();
    for (ready_rx, go) in ready {
        ready_rx.await.unwrap();
        gos.push(go);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (own0, server0) = (own_cpu(), server.cpu_split());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    for go in gos {
        let _ = go.send(end);
    }
    tokio::time::sleep_until(end.into()).await;
    let ops = acked.load(Ordering::Relaxed);
    let (own1, server1) = (own_cpu(), server.cpu_split());
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let server_cpu = (server1.0 - server0.0) + (server1.1 - server0.1);
    println!(
        "{:6} {window:2} in flight: {:8.0} ops/s; this process {:6.1} us per op; server {:6.2} us per forward",
        if room { "Room" } else { "Client" },
        ops as f64 / elapsed,
        (own1 - own0) * 1e6 / ops.max(1) as f64,
        server_cpu * 1e6 / (ops.max(1) * (c as u64 - 1)) as f64,
    );
}
