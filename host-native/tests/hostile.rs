//! What hostile or broken clients get, over real sockets on 127.0.0.1:
//! raw WebSocket frames that break RFC 6455, input an error would echo, and
//! a client that pipelines far more than it may have in flight. Real clock:
//! short timeouts, generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gathering_core::protocol::{CLOSE_INVALID_DATA, CLOSE_PROTOCOL, MAX_MESSAGE_BYTES};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Config, DEFAULT_MAX_IN_FLIGHT, Encoding, GatheringId};
use gathering_native::client::Reply;
use gathering_native::{Running, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(10);

type Client = gathering_native::client::Client<Tournament>;

async fn start(dir: &std::path::Path) -> Running {
    Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir)
        .gathering(Config::default())
        .start()
        .await
        .unwrap()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("timed out")
}

fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

/// A TCP connection that has done the WebSocket handshake by hand, so that
/// it can send frames no WebSocket library would.
async fn raw_upgrade(server: &Running, gathering: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /gatherings/{gathering} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 response up to its blank line, byte by byte so that no
    // frame after it is swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        within(s.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A client frame: first byte as given, payload masked (unless `masked` is
/// false), payload under 126 bytes.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        out.extend(key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

/// Reads server frames until a close frame; returns its code, or `None`
/// if the connection ended without one.
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let mut head = [0u8; 2];
        if s.read_exact(&mut head).await.is_err() {
            return None;
        }
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).await.ok()?;
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).await.ok()?;
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        if head[0] & 0x0f == 0x8 {
            return payload
                .get(..2)
                .map(|code| u16::from_be_bytes([code[0], code[1]]));
        }
    }
}

#[tokio::test]
async fn protocol_violations_get_a_close_frame_with_the_rfc_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let cases: [(&str, Vec<u8>, u16); 9] = [
        (
            "invalid UTF-8 in text",
            frame(0x81, &[0xff, 0xfe], true),
            CLOSE_INVALID_DATA,
        ),
        (
            "unmasked client frame",
            frame(0x81, b"{}", false),
            CLOSE_PROTOCOL,
        ),
        ("reserved bit set", frame(0xc1, b"{}", true), CLOSE_PROTOCOL),
        ("fragmented ping", frame(0x09, b"p", true), CLOSE_PROTOCOL),
        (
            "stray continuation",
            frame(0x80, b"x", true),
            CLOSE_PROTOCOL,
        ),
        (
            "reserved data opcode",
            frame(0x83, b"x", true),
            CLOSE_PROTOCOL,
        ),
        (
            "reserved control opcode",
            frame(0x8b, b"x", true),
            CLOSE_PROTOCOL,
        ),
        (
            "one-byte close payload",
            frame(0x88, &[3], true),
            CLOSE_PROTOCOL,
        ),
        // Text, then a new text frame before the first one finished.
        (
            "data frame inside a fragmented message",
            [frame(0x01, b"{", true), frame(0x81, b"}", true)].concat(),
            CLOSE_PROTOCOL,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut s = raw_upgrade(&server, "rfc").await;
        s.write_all(&bytes).await.unwrap();
        assert_eq!(within(close_code(&mut s)).await, Some(code), "{what}");
    }
    // The gathering serves others throughout.
    let mut ada: Client = within(Client::connect(
        &format!("ws://{}", server.addr),
        &id("rfc"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    let name = TournamentOp::RegisterPlayer { name: "Ada".into() };
    assert_eq!(within(ada.op(name)).await, Ok(1));
    server.shutdown().await;
}

#[tokio::test]
async fn an_error_quotes_only_a_short_prefix_of_a_huge_op() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .max_frame_bytes(4 << 20)
        .start()
        .await
        .unwrap();
    let mut client: Client = within(Client::connect(
        &format!("ws://{}", server.addr),
        &id("echo"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    let name = "\"\u{7}".repeat(100_000);
    let op = TournamentOp::RecordResult {
        a: format!("{name}a"),
        b: format!("{name}b"),
        winner: None,
    };
    let sent = client.submit(op).await.unwrap();
    match within(client.reply()).await.unwrap() {
        Reply::Rejected { id, code, message } => {
            assert_eq!(id, Some(sent));
            assert_eq!(code, "unknown_player");
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "{} bytes",
                message.len()
            );
            assert!(message.contains(r#"\"\u{7}"#), "escaped: {message}");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_pipelines_and_reads_is_refused_ops_never_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client: Client = within(Client::connect(
        &format!("ws://{}", server.addr),
        &id("fast"),
        Encoding::Postcard,
    ))
    .await
    .unwrap();
    for name in ["a", "b"] {
        let op = TournamentOp::RegisterPlayer { name: name.into() };
        within(client.op(op)).await.unwrap();
    }
    let n = 20_000u64;
    let result = TournamentOp::RecordResult {
        a: "a".into(),
        b: "b".into(),
        winner: Some("a".into()),
    };
    let (mut acked, mut refused) = (0u64, 0u64);
    let mut replies = 0;
    // Writes in bursts of 2,000 and reads every reply: far more in flight
    // than the server allows, all of it answered.
    let mut sent = 0;
    while replies < n {
        if sent < n && sent - replies < 2_000 {
            for _ in 0..500 {
                client.submit(result.clone()).await.unwrap();
                sent += 1;
            }
            client.flush().await.unwrap();
            continue;
        }
        match within(client.reply()).await {
            Ok(Reply::Acked { .. }) => acked += 1,
            Ok(Reply::Rejected { code, message, .. }) => {
                assert_eq!(code, "too_many_in_flight", "{message}");
                assert!(
                    message.contains(&DEFAULT_MAX_IN_FLIGHT.to_string()),
                    "{message}"
                );
                refused += 1;
            }
            other => panic!("after {replies} replies: {other:?}"),
        }
        replies += 1;
    }
    assert_eq!(acked + refused, n);
    assert!(
        acked >= u64::from(DEFAULT_MAX_IN_FLIGHT),
        "acked {acked}, refused {refused}"
    );
    // Exactly the acknowledged ops were applied.
    let (seq, state) = within(client.fetch()).await.unwrap();
    assert_eq!(seq, 2 + acked);
    assert_eq!(state.matches.len() as u64, acked);
    // Still connected, still served.
    assert!(within(client.op(result)).await.is_ok());
    server.shutdown().await;
}

/// A store that fails every commit while `failing` is set, as a full or
/// broken disk does, and whose first commit after [`Flaky::hold`] waits to
/// be let go and then fails; it records what the commits that went through
/// logged.
struct Flaky {
    inner: gathering_native::RedbStore,
    failing: std::sync::atomic::AtomicBool,
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    holding: std::sync::atomic::AtomicBool,
    /// (gathering, seqs logged) of every commit that went through.
    written: std::sync::Mutex<Vec<(String, Vec<u64>)>>,
}

impl Flaky {
    fn new(dir: &std::path::Path) -> Arc<Self> {
        Arc::new(Flaky {
            inner: gathering_native::RedbStore::open(dir, "tournament").unwrap(),
            failing: false.into(),
            gate: Default::default(),
            holding: false.into(),
            written: Default::default(),
        })
    }

    /// Holds the next commit; it fails once the sender is dropped or sends.
    fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.gate.lock().unwrap() = Some(rx);
        tx
    }
}

impl gathering_native::Store for Flaky {
    fn load(
        &self,
        id: &GatheringId,
    ) -> Result<gathering_core::Loaded, gathering_native::StoreError> {
        self.inner.load(id)
    }

    fn commit(
        &self,
        writes: &[gathering_native::Write],
    ) -> Result<gathering_native::Fenced, gathering_native::StoreError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            self.holding.store(true, Ordering::SeqCst);
            let _ = gate.recv();
            return Err(gathering_native::StoreError("I/O error".into()));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(gathering_native::StoreError(
                "No space left on device".into(),
            ));
        }
        let mut written = self.written.lock().unwrap();
        for w in writes {
            let seqs = w.commit.log.iter().map(|e| e.seq).collect();
            written.push((w.id.to_string(), seqs));
        }
        self.inner.commit(writes)
    }
}

/// A server on `store`, its WebSocket URL, and a client of `g` on it.
async fn on_store(
    store: Arc<dyn gathering_native::Store>,
    g: &GatheringId,
) -> (Running, String, Client) {
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .store(store)
        .start()
        .await
        .unwrap();
    let url = format!("ws://{}", server.addr);
    let client = within(Client::connect(&url, g, Encoding::Json))
        .await
        .unwrap();
    (server, url, client)
}

#[tokio::test]
async fn a_failed_commit_is_told_to_its_client_and_the_gathering_restarts() {
    use gathering_core::DisperseReason;
    use gathering_core::protocol::CLOSE_INTERNAL;
    use gathering_native::client::{ClientError, Incoming};

    let dir = tempfile::tempdir().unwrap();
    let store = Flaky::new(dir.path());
    let g = id("disk");
    let (server, url, mut ada) = on_store(store.clone(), &g).await;
    let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
    assert_eq!(within(ada.op(register("Ada"))).await, Ok(1));

    store.failing.store(true, Ordering::SeqCst);
    let sent = ada.submit(register("Bob")).await.unwrap();
    match within(ada.reply()).await.unwrap() {
        Reply::Rejected { id, code, .. } => {
            assert_eq!(id, Some(sent));
            assert_eq!(code, "not_durable");
        }
        other => panic!("{other:?}"),
    }
    // Then the gathering restarts: told why, closed with 1011.
    match within(ada.next()).await {
        Ok(Incoming::Dispersed { reason, code }) => {
            assert_eq!(reason, DisperseReason::StorageFailed);
            assert_eq!(code, Some(CLOSE_INTERNAL));
        }
        Err(ClientError::Dispersed(reason)) => assert_eq!(reason, DisperseReason::StorageFailed),
        other => panic!("{other:?}"),
    }

    assert!(
        server.metrics.storage_failures.get() >= 1,
        "counted in /metrics"
    );
    // The disk is back: the successor holds what was durable, not Bob.
    store.failing.store(false, Ordering::SeqCst);
    let mut again: Client = within(Client::connect(&url, &g, Encoding::Json))
        .await
        .unwrap();
    let (seq, state) = within(again.fetch()).await.unwrap();
    assert_eq!(seq, 1);
    assert!(state.players.contains_key("Ada") && !state.players.contains_key("Bob"));
    assert_eq!(within(again.op(register("Bob"))).await, Ok(2));

    // A shutdown ends while storage fails.
    store.failing.store(true, Ordering::SeqCst);
    again.submit(register("Cy")).await.unwrap();
    again.flush().await.unwrap();
    within(server.shutdown()).await;
}

/// Gatherings queue their next commit while the last is being written; when
/// that write fails, the queued one must not be written after it (the log
/// would skip the failed op, and no successor could replay it).
#[tokio::test]
async fn a_commit_queued_behind_a_failed_one_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Flaky::new(dir.path());
    let g = id("queued");
    let (server, url, mut ada) = on_store(store.clone(), &g).await;
    let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
    assert_eq!(within(ada.op(register("Ada"))).await, Ok(1));

    // Bob's commit is held in the store; Cy's is queued behind it.
    let release = store.hold();
    let bob = ada.submit(register("Bob")).await.unwrap();
    ada.flush().await.unwrap();
    within(async {
        while !store.holding.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let processed = server.metrics.messages_processed.get();
    let cy = ada.submit(register("Cy")).await.unwrap();
    ada.flush().await.unwrap();
    within(async {
        while server.metrics.messages_processed.get() == processed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Cy is accepted: her commit is handed over in the same turn of the
    // gathering, before it can hear of the failure.
    drop(release);

    for sent in [bob, cy] {
        match within(ada.reply()).await.unwrap() {
            Reply::Rejected { id, code, .. } => {
                assert_eq!((id, code.as_str()), (Some(sent), "not_durable"));
            }
            other => panic!("{other:?}"),
        }
    }
    // The successor holds Ada alone, and carries on from her.
    let mut again: Client = within(Client::connect(&url, &g, Encoding::Json))
        .await
        .unwrap();
    let (seq, state) = within(again.fetch()).await.unwrap();
    assert_eq!(seq, 1);
    assert_eq!(state.players.len(), 1);
    assert_eq!(within(again.op(register("Dee"))).await, Ok(2));
    let written = store.written.lock().unwrap().clone();
    assert_eq!(
        written,
        [
            ("queued".to_string(), vec![1]),
            ("queued".to_string(), vec![2])
        ],
        "Cy's op (3) was never written"
    );
    server.shutdown().await;
}

/// The status line of a WebSocket upgrade to gathering `origin-test` sent
/// with `headers`.
async fn upgrade_status(addr: std::net::SocketAddr, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /gatherings/origin-test HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n") {
        let mut byte = [0u8];
        within(s.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().trim().to_string()
}

#[tokio::test]
async fn only_pages_of_allowed_origins_may_open_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .allowed_origins(["https://app.example.com".to_string()])
        .start()
        .await
        .unwrap();
    let addr = server.addr;
    let switching = "HTTP/1.1 101 Switching Protocols";
    // Not a browser: served.
    assert_eq!(upgrade_status(addr, "").await, switching);
    // The server's own page, and a listed site: served.
    let own = format!("Origin: http://{addr}\r\n");
    assert_eq!(upgrade_status(addr, &own).await, switching);
    let listed = "Origin: https://App.Example.com\r\n";
    assert_eq!(upgrade_status(addr, listed).await, switching);
    // Any other page: refused before the upgrade.
    for evil in ["Origin: https://evil.example\r\n", "Origin: null\r\n"] {
        assert!(
            upgrade_status(addr, evil).await.starts_with("HTTP/1.1 403"),
            "{evil}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_listing_and_metrics_are_only_on_the_admin_listener_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .admin_listen(Some("127.0.0.1:0".parse().unwrap()))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let admin = server.admin_addr.unwrap();
    let get = |at: std::net::SocketAddr, path: &'static str| async move {
        let mut s = TcpStream::connect(at).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    for path in ["/gatherings", "/gatherings?limit=5", "/metrics"] {
        let public = get(server.addr, path).await;
        assert!(public.starts_with("HTTP/1.1 404"), "{path}: {public}");
        assert!(get(admin, path).await.starts_with("HTTP/1.1 200"), "{path}");
    }
    assert!(
        get(admin, "/gatherings?limit=abc")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        get(admin, "/gatherings?limit=99999999")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Nor does the admin listener take WebSockets.
    assert!(
        get(admin, "/gatherings/spring-open")
            .await
            .starts_with("HTTP/1.1 404")
    );
    server.shutdown().await;
}

/// Whether the server closes `s` within `bound` (reads end or fail).
async fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn limited(dir: &std::path::Path, limits: gathering_native::Limits) -> Running {
    Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir)
        .limits(limits)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_and_silent_http_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let limits = gathering_native::Limits {
        header_timeout: Duration::from_millis(300),
        http_timeout: Duration::from_millis(1500),
        ..gathering_native::Limits::default()
    };
    let server = limited(dir.path(), limits).await;
    // Connects and says nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Sends its headers a byte at a time, slower than the deadline allows.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(200)
        {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a trickled request stayed open"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent connection stayed open"
    );
    // Keep-alive that never upgrades ends at the HTTP deadline.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "keep-alive stayed open"
    );
    // A WebSocket is not cut off by either.
    let mut ws: Client = within(Client::connect(
        &format!("ws://{}", server.addr),
        &id("slow"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let op = TournamentOp::RegisterPlayer { name: "Ada".into() };
    assert_eq!(within(ws.op(op)).await, Ok(1));
    server.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_caps_are_refused_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let limits = gathering_native::Limits {
        max_connections: 3,
        max_per_address: 2,
        ..gathering_native::Limits::default()
    };
    let server = limited(dir.path(), limits).await;
    let url = format!("ws://{}", server.addr);
    // Two WebSockets from 127.0.0.1 hold both of its slots ...
    let a: Client = within(Client::connect(&url, &id("cap"), Encoding::Json))
        .await
        .unwrap();
    let b: Client = within(Client::connect(&url, &id("cap"), Encoding::Json))
        .await
        .unwrap();
    // ... so a third connection from it is told why, and closed.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    within(third.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    assert!(
        Client::connect(&url, &id("cap"), Encoding::Json)
            .await
            .is_err()
    );
    assert_eq!(
        server.metrics.connections_refused.get(),
        2,
        "counted in /metrics"
    );
    // A slot frees when its WebSocket closes.
    drop(a);
    b.close().await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Ok(mut c) = Client::connect(&url, &id("cap"), Encoding::Json).await {
            let op = TournamentOp::RegisterPlayer { name: "Ada".into() };
            assert_eq!(within(c.op(op)).await, Ok(1));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slots never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_that_stalls_midway_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let limits = gathering_native::Limits {
        frame_timeout: Duration::from_millis(500),
        ..gathering_native::Limits::default()
    };
    let server = limited(dir.path(), limits).await;
    let mut s = raw_upgrade(&server, "stall").await;
    // A masked binary frame announcing 60,000 bytes, of which 1,000 come.
    let mut head = vec![0x82u8, 0x80 | 126];
    head.extend(60_000u16.to_be_bytes());
    head.extend([1, 2, 3, 4]);
    head.extend(vec![0u8; 1000]);
    s.write_all(&head).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        within(close_code(&mut s)).await,
        Some(gathering_core::protocol::CLOSE_POLICY)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before its deadline"
    );
    // A follower that is silent between messages is not cut off.
    let mut ws: Client = within(Client::connect(
        &format!("ws://{}", server.addr),
        &id("stall"),
        Encoding::Json,
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let op = TournamentOp::RegisterPlayer { name: "Ada".into() };
    assert_eq!(within(ws.op(op)).await, Ok(1));
    server.shutdown().await;
}

/// This process's resident memory, in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn pongs_count_against_the_queue_of_a_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    // Pings with the largest payload a control frame may carry, never
    // reading a pong: without a bound the server would keep every pong it
    // cannot write.
    let ping = frame(0x89, &[7u8; 125], true);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    let mut s = raw_upgrade(&server, "pings").await;
    let before = resident();
    // The most it held, sampled: it lets go of everything once it closes.
    let peak = Arc::new(AtomicUsize::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(resident(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut sent = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while sent < 128 << 20 {
            if s.write_all(&burst).await.is_err() {
                break;
            }
            sent += burst.len();
        }
    })
    .await;
    sampler.abort();
    let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
    println!("{sent} bytes of pings in; the process grew by at most {grown} bytes");
    // Held pongs fill the connection's 16 MiB queue, and then it is closed
    // (1008) like any client that does not read what it is sent.
    assert!(sent >= 16 << 20, "only {sent} bytes of pings went in");
    assert!(sent < 64 << 20, "still open after {sent} bytes of pings");
    assert!(
        grown < 48 << 20,
        "{grown} bytes held for {sent} bytes of pings"
    );

    // A client that reads its pongs pings past that bound and stays.
    let s = raw_upgrade(&server, "pings").await;
    let (mut rx, mut tx) = s.into_split();
    let bursts = (32 << 20) / burst.len() + 1;
    // Each pong is the ping's payload behind an unmasked two-byte header.
    let pongs = bursts * 512 * (2 + 125);
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < pongs {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    for _ in 0..bursts {
        within(tx.write_all(&burst)).await.unwrap();
    }
    // Every ping answered, the connection open.
    assert_eq!(within(reader).await.unwrap(), pongs);
    server.shutdown().await;
}
