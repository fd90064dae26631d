//! End-to-end tests over real sockets on 127.0.0.1 with the Rust client.
//! Real clock: short timeouts, generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::time::{Duration, Instant};

use gathering_core::protocol::{CLOSE_DISPERSED, CLOSE_GOING_AWAY, CLOSE_TOO_BIG};
use gathering_core::tournament::Tournament;
use gathering_core::tournament::TournamentOp;
use gathering_core::{Config, DisperseReason, Encoding, GatheringId, ServerMsg};
use gathering_native::client::{ClientError, Incoming};
use gathering_native::{Builder, Running, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const BOUND: Duration = Duration::from_secs(10);

type Client = gathering_native::client::Client<Tournament>;

mod common;

fn config(dir: &Path, idle: Duration) -> Builder<Tournament> {
    Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .admin_listen(Some("127.0.0.1:0".parse().unwrap()))
        .data_dir(dir)
        .gathering(Config {
            idle_timeout: idle,
            retry_interval: Duration::from_millis(100),
            max_retry_interval: Duration::from_millis(400),
            ..Config::default()
        })
        .max_frame_bytes(4096)
}

fn url(server: &Running) -> String {
    format!("ws://{}", server.addr)
}

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

fn register(name: &str) -> TournamentOp {
    TournamentOp::RegisterPlayer { name: name.into() }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("timed out")
}

/// A plain HTTP GET; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    common::status_and_body(&out)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn ops_are_acked_and_forwarded_in_each_clients_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("spring-open");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    let mut bob: Client = within(Client::connect(&url(&server), &g, Encoding::Postcard))
        .await
        .unwrap();
    // Make sure both joins were processed before the first op.
    within(ada.fetch()).await.unwrap();
    within(bob.fetch()).await.unwrap();

    assert_eq!(within(ada.op(register("Ada"))).await, Ok(1));
    assert_eq!(
        within(bob.next()).await,
        Ok(Incoming::Forward {
            seq: 1,
            op: register("Ada")
        })
    );
    assert_eq!(within(bob.op(register("Bob"))).await, Ok(2));
    assert_eq!(
        within(ada.next()).await,
        Ok(Incoming::Forward {
            seq: 2,
            op: register("Bob")
        })
    );
    let err = within(ada.op(register("Ada"))).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Rejected { code, .. } if code == "duplicate_player"),
        "{err}"
    );
    let (seq, state) = within(bob.fetch()).await.unwrap();
    assert_eq!(seq, 2);
    assert_eq!(state.players.keys().collect::<Vec<_>>(), ["Ada", "Bob"]);

    let (status, body) = get(server.admin_addr.unwrap(), "/gatherings").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""id":"spring-open","connections":2"#),
        "{body}"
    );
    let (status, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_forward_is_retried_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("retry");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    let mut bob: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    bob.set_auto_ack(false);
    within(bob.fetch()).await.unwrap();
    within(ada.op(register("Ada"))).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            within(bob.read()).await,
            Ok(ServerMsg::Forward { seq: 1, .. })
        ));
    }
    within(bob.ack(1)).await.unwrap();
    // Re-sends that crossed the ack may still arrive; after that, silence.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match bob.read().await {
                Ok(ServerMsg::Forward { seq: 1, .. }) => continue,
                other => return other,
            }
        }
    });
    assert!(quiet.await.is_err(), "forward still re-sent after its ack");
    server.shutdown().await;
}

#[tokio::test]
async fn automatic_acks_are_cumulative_and_go_out_unprompted() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("acks");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Postcard))
        .await
        .unwrap();
    let mut bob: Client = within(Client::connect(&url(&server), &g, Encoding::Postcard))
        .await
        .unwrap();
    within(bob.fetch()).await.unwrap();
    let processed = || metric(&server.metrics.render(), "messages_processed_total").unwrap();
    let before = processed();
    for i in 0..20 {
        within(ada.submit(register(&format!("p{i}"))))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        assert!(matches!(
            within(ada.reply()).await,
            Ok(gathering_native::client::Reply::Acked { .. })
        ));
    }
    for seq in 1..=20 {
        assert!(
            matches!(within(bob.next()).await, Ok(Incoming::Forward { seq: s, .. }) if s == seq)
        );
    }
    // Bob sends nothing else, yet its ack goes out: nothing is re-sent
    // (the retry interval is 100 ms).
    let quiet = tokio::time::timeout(Duration::from_millis(800), bob.next()).await;
    assert!(quiet.is_err(), "re-sent or ended: {quiet:?}");
    // Ada's 20 ops, and Bob's acks: fewer than one per forward.
    let acks = processed() - before - 20.0;
    assert!(
        (1.0..=10.0).contains(&acks),
        "{acks} ack frames for 20 forwards"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn idle_gathering_disperses_at_its_deadline_and_rejoin_sees_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(400);
    let server = config(dir.path(), idle).start().await.unwrap();
    let g = id("short");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    // The op is processed after this instant, so the deadline is at least
    // `idle` after it: an earlier dispersal would be early, whatever the load.
    let sent = Instant::now();
    within(ada.op(register("Ada"))).await.unwrap();
    let end = within(ada.next()).await.unwrap();
    let waited = sent.elapsed();
    assert_eq!(
        end,
        Incoming::Dispersed {
            reason: DisperseReason::Idle,
            code: Some(CLOSE_DISPERSED)
        }
    );
    assert!(waited >= idle, "dispersed early, after {waited:?}");
    assert!(
        waited < idle + Duration::from_secs(2),
        "dispersed after {waited:?}"
    );

    let mut again: Client = within(Client::connect(&url(&server), &g, Encoding::Postcard))
        .await
        .unwrap();
    let (seq, state) = within(again.fetch()).await.unwrap();
    assert_eq!(seq, 1);
    assert!(state.players.contains_key("Ada"));
    let metrics = get(server.admin_addr.unwrap(), "/metrics").await.1;
    assert_eq!(
        metric(&metrics, "gatherings_dispersed_total{reason=\"idle\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("dispersal_lateness_seconds_bucket"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_state_and_shutdown_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("durable");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    within(ada.op(register("Ada"))).await.unwrap();
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(
        within(ada.next()).await,
        Ok(Incoming::Dispersed {
            reason: DisperseReason::Shutdown,
            code: Some(CLOSE_GOING_AWAY)
        })
    );
    within(stopping).await.unwrap();

    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    let (_, state) = within(ada.fetch()).await.unwrap();
    assert!(state.players.contains_key("Ada"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_answered_and_contained() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("bad");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    within(ada.send_raw(Message::text("{\"type\":\"op\"")))
        .await
        .unwrap();
    match within(ada.read()).await.unwrap() {
        ServerMsg::Error { id: None, code, .. } => assert_eq!(code, "bad_frame"),
        other => panic!("{other:?}"),
    }
    within(ada.send_raw(Message::binary(vec![0xff, 0x00])))
        .await
        .unwrap();
    assert!(matches!(
        within(ada.read()).await,
        Ok(ServerMsg::Error { id: None, .. })
    ));
    // The connection and the gathering carry on.
    assert_eq!(within(ada.op(register("Ada"))).await, Ok(1));

    // An oversized frame closes only that connection, with 1009.
    let mut big: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    within(big.send_raw(Message::text("x".repeat(5000))))
        .await
        .unwrap();
    match within(big.read()).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, Some(CLOSE_TOO_BIG)),
        other => panic!("{other:?}"),
    }
    assert_eq!(within(ada.op(register("Bob"))).await, Ok(2));

    for bad in [
        "/gatherings/has%20space",
        "/gatherings/a.b",
        &format!("/gatherings/{}", "x".repeat(65)),
    ] {
        let (status, body) = get(server.addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("gathering id"), "{body}");
    }
    let (status, _) = get(server.addr, "/gatherings/has%20space").await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn many_gatherings_dispersing_at_once_leave_none_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c: Client = within(Client::connect(
            &url(&server),
            &id(&format!("g{i}")),
            Encoding::Postcard,
        ))
        .await
        .unwrap();
        // Right after joining, so that a slow machine connecting the other
        // clients cannot let this gathering go idle before its op.
        within(c.op(register("Ada"))).await.unwrap();
        clients.push(c);
    }
    for c in &mut clients {
        assert!(matches!(
            within(c.next()).await,
            Ok(Incoming::Dispersed {
                reason: DisperseReason::Idle,
                ..
            })
        ));
    }
    let deadline = Instant::now() + BOUND;
    loop {
        let metrics = get(server.admin_addr.unwrap(), "/metrics").await.1;
        if metric(&metrics, "gatherings_live") == Some(0.0) {
            assert_eq!(
                metric(&metrics, "gatherings_dispersed_total{reason=\"idle\"}"),
                Some(200.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gatherings still live: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

/// Joins sent around the idle deadline, some of them while the gathering is
/// dispersing: each must reach a gathering holding the persisted state,
/// whether it reached the old one or its successor. (On this machine about
/// three in four arrive at or after the dispersal.)
#[tokio::test]
async fn joins_racing_dispersal_reach_a_gathering_with_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(300);
    let server = config(dir.path(), idle).start().await.unwrap();
    let url = url(&server);
    let mut joins = Vec::new();
    for i in 0..40u64 {
        let g = id(&format!("race{i}"));
        let mut ada: Client = within(Client::connect(&url, &g, Encoding::Postcard))
            .await
            .unwrap();
        within(ada.op(register("Ada"))).await.unwrap();
        within(ada.close()).await;
        // The departure was the last activity, at about `left`; a joiner
        // arrives within a few milliseconds either side of the deadline.
        let left = Instant::now();
        let url = url.clone();
        joins.push(tokio::spawn(async move {
            let offset = Duration::from_micros(500 * (i % 12));
            tokio::time::sleep_until((left + idle - Duration::from_millis(3) + offset).into())
                .await;
            let mut bob: Client = within(Client::connect(&url, &g, Encoding::Json))
                .await
                .unwrap();
            let (seq, state) = within(bob.fetch()).await.unwrap();
            (seq, state.players.contains_key("Ada"))
        }));
    }
    for join in joins {
        assert_eq!(join.await.unwrap(), (1, true));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_engine_mounts_in_a_warp_app_of_ones_own() {
    use warp::Filter;
    let dir = tempfile::tempdir().unwrap();
    let engine = config(dir.path(), Duration::from_secs(60)).build().unwrap();
    let hello = warp::path!("hello").map(|| "hi");
    let routes = engine
        .routes()
        .or(engine.admin_routes())
        .or(hello)
        .recover(gathering_native::recover);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(warp::serve(routes).incoming(listener).run());
    assert_eq!(get(addr, "/hello").await, (200, "hi".into()));
    let (status, body) = get(addr, "/nope").await;
    assert_eq!(status, 404, "{body}");
    let url = format!("ws://{addr}");
    let mut ada: Client = within(Client::connect(&url, &id("mounted"), Encoding::Json))
        .await
        .unwrap();
    assert_eq!(within(ada.op(register("Ada"))).await, Ok(1));
    let (status, body) = get(addr, "/gatherings").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"mounted""#), "{body}");
    // The engine's shutdown says goodbye to its clients, as a server's does.
    let (_, ()) = tokio::join!(
        async {
            assert_eq!(
                within(ada.next()).await,
                Ok(Incoming::Dispersed {
                    reason: DisperseReason::Shutdown,
                    code: Some(CLOSE_GOING_AWAY)
                })
            );
        },
        within(engine.shutdown())
    );
    server.abort();
}

/// The client reads a few kilobytes at a time; a state of many times that
/// still arrives whole, in both encodings.
#[tokio::test]
async fn a_state_far_larger_than_a_read_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = config(dir.path(), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let g = id("large-state");
    let mut ada: Client = within(Client::connect(&url(&server), &g, Encoding::Json))
        .await
        .unwrap();
    let name = |i: usize| format!("{i:0>64}");
    for round in 0..5 {
        for i in 0..200 {
            ada.submit(register(&name(round * 200 + i))).await.unwrap();
        }
        ada.flush().await.unwrap();
        for _ in 0..200 {
            let reply = within(ada.reply()).await.unwrap();
            assert!(
                matches!(reply, gathering_native::client::Reply::Acked { .. }),
                "{reply:?}"
            );
        }
    }
    for encoding in [Encoding::Json, Encoding::Postcard] {
        let mut bob: Client = within(Client::connect(&url(&server), &g, encoding))
            .await
            .unwrap();
        let (seq, state) = within(bob.fetch()).await.unwrap();
        assert_eq!(seq, 1000);
        assert_eq!(state.players.len(), 1000);
        assert!(state.players.contains_key(&name(999)));
    }
    server.shutdown().await;
}
