//! `connections`: memory of idle gatherings holding one WebSocket
//! connection each, in a `gathering-server` process.

use std::time::Duration;

use crate::measure::{SESSIONS, id, join, rss_of};
use crate::servers::ChildServer;
use gathering_core::Encoding;
use gathering_core::tournament::Tournament;
use gathering_native::client::Client;

pub(crate) async fn connections(smoke: bool) {
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
        let mut c = join(&url, &id(&format!("c{i}"))).await;
        // The answer proves the gathering is live and holds the connection.
        c.fetch().await.unwrap();
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_of(pid);
    let sessions = if SESSIONS.load(std::sync::atomic::Ordering::Relaxed) {
        " with a session"
    } else {
        ""
    };
    println!(
        "\n== connections: {n} idle gatherings holding one WebSocket each{sessions}, gathering-server process RSS"
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
