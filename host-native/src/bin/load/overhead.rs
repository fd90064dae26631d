//! `overhead`: messages per second through one gathering per
//! stale-detection strategy, and the lateness of real-clock dispersals.

use std::time::{Duration, Instant};

use crate::measure::{id, median, quantile, sorted, wait_until};
use crate::servers::{Detection, Server};
use gathering_core::protocol::{ClientMsg, encode};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Encoding, Frame};
use gathering_native::client::Client;
use tokio_tungstenite::tungstenite::Message;

#[cfg(feature = "bench")]
pub(crate) const DETECTIONS: &[(Detection, &str)] = &[
    (Detection::Off, "none"),
    (Detection::Exact, "exact"),
    (Detection::RearmPerMessage, "rearm"),
];
#[cfg(not(feature = "bench"))]
pub(crate) const DETECTIONS: &[(Detection, &str)] = &[(Detection::Exact, "exact")];

/// Sends `n` postcard acks on one connection as fast as the socket takes
/// them, 64 to a write (the client disables Nagle's algorithm, which used
/// to gather them), then a fetch; returns messages per second once the
/// fetch answers (the gathering handles its mailbox in order, so all were
/// processed).
pub(crate) async fn pump(url: &str, n: u64) -> f64 {
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

pub(crate) async fn overhead(smoke: bool) {
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
