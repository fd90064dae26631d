//! The second application, `chat`, served by its example binary
//! (`cargo run --example chat`) exactly as a user runs it: a child process
//! on a free loopback port, spoken to over real WebSockets. Real clock:
//! short timeouts, generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use gathering_core::chat::{Chat, ChatOp};
use gathering_core::protocol::CLOSE_DISPERSED;
use gathering_core::tournament::Tournament;
use gathering_core::{DisperseReason, Encoding, GatheringId};
use gathering_native::client::{ClientError, Incoming};

type Client = gathering_native::client::Client<Chat>;

mod common;

const BOUND: Duration = Duration::from_secs(10);

/// The example binary, which `cargo test` builds beside the test binaries.
fn example() -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("examples").join("chat")
}

/// Starts the chat server on a free port; returns the child and its address.
fn spawn_chat(dir: &Path, idle: &str) -> (Child, std::net::SocketAddr) {
    common::spawn(&example(), dir, &["--idle-timeout", idle])
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

fn say(text: &str) -> ChatOp {
    ChatOp::Say { text: text.into() }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("timed out")
}

/// A plain HTTP GET; returns (status, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    common::status_and_body(&out)
}

#[tokio::test]
async fn chat_acks_forwards_refuses_bad_text_disperses_and_respawns() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, admin) =
        common::spawn_admin(&example(), dir.path(), &["--idle-timeout", "2s"]);
    let url = format!("ws://{addr}");
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));
    let room = id("lobby");
    let mut ada = within(Client::connect(&url, &room, Encoding::Json))
        .await
        .unwrap();
    let mut bob = within(Client::connect(&url, &room, Encoding::Postcard))
        .await
        .unwrap();
    within(ada.fetch()).await.unwrap();
    within(bob.fetch()).await.unwrap();

    assert_eq!(within(ada.op(say("hello"))).await, Ok(1));
    assert_eq!(
        within(bob.next()).await,
        Ok(Incoming::Forward {
            seq: 1,
            op: say("hello")
        })
    );
    assert_eq!(within(bob.op(say("hi Ada"))).await, Ok(2));
    assert_eq!(
        within(ada.next()).await,
        Ok(Incoming::Forward {
            seq: 2,
            op: say("hi Ada")
        })
    );
    for bad in [String::new(), "x".repeat(1001)] {
        let err = within(ada.op(say(&bad))).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rejected { code, .. } if code == "invalid_text"),
            "{err}"
        );
    }
    let (seq, state) = within(bob.fetch()).await.unwrap();
    assert_eq!(seq, 2);
    let said: Vec<&str> = state.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(said, ["hello", "hi Ada"]);
    assert_ne!(state.messages[0].from, state.messages[1].from);

    let (status, body) = get(admin, "/gatherings");
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"lobby","connections":2"#), "{body}");
    let (status, metrics) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("gatherings_live 1"), "{metrics}");
    // The public listener lists nothing and keeps its metrics to itself,
    // but answers for an id one knows.
    assert_eq!(get(addr, "/gatherings").0, 404);
    assert_eq!(get(addr, "/metrics").0, 404);
    let (status, body) = get(addr, "/gatherings/lobby/status");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""live":true,"id":"lobby","connections":2"#),
        "{body}"
    );

    // Two seconds without a message: both are told, then closed with 4000.
    for client in [&mut ada, &mut bob] {
        assert_eq!(
            within(client.next()).await,
            Ok(Incoming::Dispersed {
                reason: DisperseReason::Idle,
                code: Some(CLOSE_DISPERSED)
            })
        );
    }
    // A rejoin respawns it from what was persisted.
    let mut again = within(Client::connect(&url, &room, Encoding::Json))
        .await
        .unwrap();
    let (seq, state) = within(again.fetch()).await.unwrap();
    assert_eq!(seq, 2);
    assert_eq!(state.messages.len(), 2);
    again.close().await;
    stop(child);

    // And so does a restart of the process.
    let (child, addr) = spawn_chat(dir.path(), "60s");
    let url = format!("ws://{addr}");
    let mut after = within(Client::connect(&url, &room, Encoding::Postcard))
        .await
        .unwrap();
    let (seq, state) = within(after.fetch()).await.unwrap();
    assert_eq!((seq, state.messages.len()), (2, 2));
    assert_eq!(within(after.op(say("still here"))).await, Ok(3));
    after.close().await;
    stop(child);
}

#[tokio::test]
async fn two_apps_in_one_data_directory_keep_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_chat(dir.path(), "60s");
    let mut c = within(Client::connect(
        &format!("ws://{addr}"),
        &id("shared"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    assert_eq!(within(c.op(say("only chat sees this"))).await, Ok(1));
    c.close().await;
    stop(child);

    // The tournament server on the same directory: a gathering of the same
    // id is new to it.
    let tournament = gathering_native::Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let url = format!("ws://{}", tournament.addr);
    let mut t = within(gathering_native::client::Client::<Tournament>::connect(
        &url,
        &id("shared"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    let (seq, state) = within(t.fetch()).await.unwrap();
    assert_eq!(seq, 0);
    assert!(state.players.is_empty());
    t.close().await;
    tournament.shutdown().await;
}
