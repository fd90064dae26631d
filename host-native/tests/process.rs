//! The server as users run it: a child process, killed with SIGKILL under
//! load (no acknowledged op may be lost) and stopped with SIGTERM (graceful).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gathering_core::protocol::CLOSE_GOING_AWAY;
use gathering_core::tournament::TournamentOp;
use gathering_core::{DisperseReason, Encoding, GatheringId};
use gathering_native::client::{Incoming, Reply};

type Client = gathering_native::client::Client<gathering_core::tournament::Tournament>;

mod common;

const BOUND: Duration = Duration::from_secs(10);

/// Starts `gathering-server` on a free port; returns the child and its address.
fn spawn_server(dir: &Path) -> (Child, String) {
    spawn_server_with(dir, &[])
}

/// The same, with more arguments.
fn spawn_server_with(dir: &Path, args: &[&str]) -> (Child, String) {
    common::server(dir, args)
}

/// Sends SIGTERM, as a service manager stops the server.
fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (within [`BOUND`]) for the server to exit, and checks it exited 0.
async fn exits_zero(child: &mut Child) {
    let deadline = Instant::now() + BOUND;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "{code:?}");
}

/// A client of gathering `g` that has registered Ada.
async fn with_ada(url: &str, g: &str) -> Client {
    let mut client: Client = Client::connect(url, &id(g), Encoding::Json).await.unwrap();
    client
        .op(TournamentOp::RegisterPlayer { name: "Ada".into() })
        .await
        .unwrap();
    client
}

/// `client` is told the server shuts down, with 1001.
async fn told_shutdown(client: &mut Client) {
    let end = tokio::time::timeout(BOUND, client.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end,
        Incoming::Dispersed {
            reason: DisperseReason::Shutdown,
            code: Some(CLOSE_GOING_AWAY)
        }
    );
}

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_op() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut load = Vec::new();
    for c in 0..4 {
        let url = url.clone();
        let acked = acked.clone();
        load.push(tokio::spawn(async move {
            let g = format!("t{}", c % 2);
            let enc = if c % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Postcard
            };
            let Ok(mut client) = Client::connect(&url, &id(&g), enc).await else {
                return;
            };
            for i in 0..5_000 {
                let name = format!("c{c}-{i}");
                match client
                    .op(TournamentOp::RegisterPlayer { name: name.clone() })
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push((g.clone(), name)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the load run, then kill the server mid-flight.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 200 && start.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for task in load {
        tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "load too small to prove anything: {}",
        acked.len()
    );

    let (mut child, url) = spawn_server(dir.path());
    for g in ["t0", "t1"] {
        let mut client: Client = Client::connect(&url, &id(g), Encoding::Json).await.unwrap();
        let (_, state) = tokio::time::timeout(BOUND, client.fetch())
            .await
            .unwrap()
            .unwrap();
        for (_, name) in acked.iter().filter(|(gg, _)| gg == g) {
            assert!(
                state.players.contains_key(name),
                "acknowledged {name} lost in {g}"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Crash safety of the op log: 20 times, clients pipeline registrations
/// into two gatherings that snapshot every 5 ops (so that kills land in log
/// appends, snapshots and the deletions of covered entries alike), and the
/// server is killed with SIGKILL after a random delay. After each restart
/// every acknowledged op is there, no op is there twice (each registers a
/// new name, and the state's op count equals its players), and the state
/// loads (a partial op would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_keeps_every_acked_op_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    // A fixed seed: the same kill points every run.
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = 0u64;
    for round in 0..20 {
        let (mut child, url) = spawn_server_with(dir.path(), &["--snapshot-ops", "5"]);
        // What the last round acknowledged survived the kill.
        let so_far = acked.lock().unwrap().clone();
        check_acked(&url, &so_far, round).await;
        let mut load = Vec::new();
        for c in 0..4 {
            let url = url.clone();
            let acked = acked.clone();
            let first = next;
            load.push(tokio::spawn(async move {
                let g = format!("k{}", c % 2);
                let Ok(mut client) = Client::connect(&url, &id(&g), Encoding::Postcard).await
                else {
                    return;
                };
                let mut in_flight = std::collections::BTreeMap::new();
                for i in first..first + 50_000 {
                    let name = format!("c{c}-{i}");
                    let op = TournamentOp::RegisterPlayer { name: name.clone() };
                    let Ok(request) = client.submit(op).await else {
                        return;
                    };
                    in_flight.insert(request, name);
                    while in_flight.len() >= 8 {
                        match client.reply().await {
                            Ok(Reply::Acked { id, .. }) => {
                                if let Some(name) = in_flight.remove(&id) {
                                    acked.lock().unwrap().push((g.clone(), name));
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        next += 100_000;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(30 + rng % 300);
        tokio::time::sleep(delay).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for task in load {
            tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    println!("{} ops acknowledged across 20 kills", acked.len());
    assert!(
        acked.len() >= 1_000,
        "load too small to prove anything: {}",
        acked.len()
    );
    let (mut child, url) = spawn_server(dir.path());
    check_acked(&url, &acked, 20).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every acknowledged op of `acked` is in its gathering, once.
async fn check_acked(url: &str, acked: &[(String, String)], round: usize) {
    for g in ["k0", "k1"] {
        let mut client: Client =
            tokio::time::timeout(BOUND, Client::connect(url, &id(g), Encoding::Json))
                .await
                .unwrap()
                .unwrap();
        let (seq, state) = tokio::time::timeout(BOUND, client.fetch())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{g} did not load after kill {round}: {e}"));
        assert_eq!(
            seq,
            state.players.len() as u64,
            "{g} after kill {round}: an op applied twice or lost"
        );
        for (_, name) in acked.iter().filter(|(gg, _)| gg == g) {
            assert!(
                state.players.contains_key(name),
                "acknowledged {name} lost in {g} after kill {round}"
            );
        }
        client.close().await;
    }
}

#[tokio::test]
async fn sigterm_disperses_everyone_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let mut client = with_ada(&url, "term").await;
    terminate(&child);
    told_shutdown(&mut client).await;
    exits_zero(&mut child).await;

    let (mut child, url) = spawn_server(dir.path());
    let mut client: Client = Client::connect(&url, &id("term"), Encoding::Json)
        .await
        .unwrap();
    let (_, state) = client.fetch().await.unwrap();
    assert!(state.players.contains_key("Ada"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_says_goodbye_to_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let clients = 100;
    let mut tasks = Vec::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<()>(clients);
    for i in 0..clients {
        let url = url.clone();
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let g = id(&format!("load{}", i % 10));
            let mut client: Client = Client::connect(&url, &g, Encoding::Postcard).await.unwrap();
            let name = format!("p{i}");
            client
                .op(TournamentOp::RegisterPlayer { name: name.clone() })
                .await
                .unwrap();
            ready_tx.send(()).await.unwrap();
            // Durable ops until the server says why it stops.
            for k in 0.. {
                let op = TournamentOp::RegisterPlayer {
                    name: format!("{name}-{k}"),
                };
                if client.op(op).await.is_err() {
                    break;
                }
            }
            loop {
                match tokio::time::timeout(BOUND, client.next()).await {
                    Ok(Ok(Incoming::Dispersed { reason, code })) => break (reason, code),
                    Ok(Ok(Incoming::Forward { .. })) => continue,
                    other => panic!("client {i}: {other:?}"),
                }
            }
        }));
    }
    for _ in 0..clients {
        tokio::time::timeout(BOUND, ready.recv()).await.unwrap();
    }
    terminate(&child);
    for task in tasks {
        let end = tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
        assert_eq!(end, (DisperseReason::Shutdown, Some(CLOSE_GOING_AWAY)));
    }
    exits_zero(&mut child).await;
}

#[tokio::test]
async fn sigterm_exits_while_a_request_is_half_sent() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let addr = url.trim_start_matches("ws://").to_string();
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /gatherings HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // And a WebSocket, which is told goodbye.
    let mut client = with_ada(&url, "half").await;
    terminate(&child);
    told_shutdown(&mut client).await;
    // A half-sent request must not hold it open.
    exits_zero(&mut child).await;
    drop(half);
}

/// `gathering-server token` mints what the server, given the same secret,
/// admits; without a secret the server refuses a public address unless
/// told `--open`.
#[tokio::test]
async fn the_token_command_mints_what_the_server_admits_and_open_mode_is_explicit() {
    let exe = Path::new(env!("CARGO_BIN_EXE_gathering-server"));
    let minted = Command::new(exe)
        .args([
            "token",
            "--sub",
            "Ada",
            "--role",
            "player",
            "--gathering",
            "spring-open",
        ])
        .args(["--ttl", "1h", "--auth-secret", "s3cret"])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server_with(dir.path(), &["--auth-secret", "s3cret"]);
    let g = GatheringId::parse("spring-open").unwrap();
    let refused = Client::connect(&url, &g, Encoding::Json).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("401")),
        "{:?}",
        refused.err()
    );
    let mut ada = tokio::time::timeout(
        BOUND,
        Client::connect_as(&url, &g, Encoding::Json, Some(&token)),
    )
    .await
    .unwrap()
    .unwrap();
    let register = TournamentOp::RegisterPlayer { name: "Ada".into() };
    assert_eq!(
        tokio::time::timeout(BOUND, ada.op(register)).await.unwrap(),
        Ok(1)
    );
    terminate(&child);
    exits_zero(&mut child).await;

    let public = Command::new(exe)
        .args([
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!public.status.success());
    let said = String::from_utf8_lossy(&public.stderr);
    assert!(
        said.contains("--auth-secret") && said.contains("--open"),
        "{said}"
    );
}
