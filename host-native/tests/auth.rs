//! Only those who belong: JWT checks at the upgrade and the app's decision
//! with the member, over real sockets on 127.0.0.1. Real clock: short
//! timeouts, generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::time::Duration;

use gathering_core::protocol::CLOSE_TOKEN_EXPIRED;
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Encoding, GatheringId};
use gathering_native::client::{ClientError, Incoming};
use gathering_native::{Jwt, Running, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Client = gathering_native::client::Client<Tournament>;

mod common;

const BOUND: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"a secret for the tests";
const HOUR: Duration = Duration::from_secs(3600);

async fn start(dir: &std::path::Path) -> Running {
    Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir)
        .authenticator(Jwt::new(SECRET))
        .start()
        .await
        .unwrap()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("timed out")
}

fn token(sub: &str, role: &str, gathering: &str, ttl: Duration) -> String {
    Jwt::new(SECRET)
        .mint_for(sub, role, gathering, ttl)
        .unwrap()
}

/// The status line and body of an upgrade request with `auth` headers.
async fn upgrade(server: &Running, path: &str, auth: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = vec![0u8; 4096];
    let n = within(s.read(&mut out)).await.unwrap();
    common::status_and_body(&String::from_utf8_lossy(&out[..n]))
}

#[tokio::test]
async fn upgrades_without_a_valid_token_for_the_gathering_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let path = "/gatherings/spring-open";
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let foreign = Jwt::new(b"another secret")
        .mint_for("Ada", "player", "*", HOUR)
        .unwrap();
    let expired = token("Ada", "player", "*", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                eyJzdWIiOiJBZGEiLCJyb2xlIjoib3JnYW5pemVyIiwiZ2F0aGVyaW5nIjoiKiIsImV4cCI6OTk5OTk5OTk5OTl9.";
    for (auth, why) in [
        (String::new(), "a token is required"),
        (bearer("not.a.jwt"), "malformed"),
        (bearer(&foreign), "signature"),
        (bearer(none), "HS256"),
        (bearer(&expired), "expired"),
    ] {
        let (status, body) = upgrade(&server, path, &auth).await;
        assert_eq!(status, 401, "{auth}: {body}");
        assert!(body.contains(r#""error":"unauthorized""#), "{body}");
        assert!(body.contains(why), "{why}: {body}");
    }
    let other = token("Ada", "player", "autumn-cup", HOUR);
    let (status, body) = upgrade(&server, path, &bearer(&other)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""error":"forbidden""#), "{body}");
    // A browser passes it in the query.
    let ok = token("Ada", "player", "spring-open", HOUR);
    let (status, _) = upgrade(&server, &format!("{path}?token={ok}"), "").await;
    assert_eq!(status, 101);
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(r#"joins_refused_total{answer="unauthorized"} 5"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn members_act_as_their_role_allows_and_an_expired_token_closes_with_4003() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let url = format!("ws://{}", server.addr);
    let g = GatheringId::parse("spring-open").unwrap();
    let join = |sub: &str, role: &str, ttl| {
        let t = token(sub, role, "spring-open", ttl);
        let (url, g) = (url.clone(), g.clone());
        async move {
            within(Client::connect_as(&url, &g, Encoding::Json, Some(&t)))
                .await
                .unwrap()
        }
    };
    let mut org = join("Org", "organizer", HOUR).await;
    let mut ada = join("Ada", "player", HOUR).await;
    let mut vic = join("Vic", "spectator", HOUR).await;
    let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
    let forbidden = |r: Result<u64, ClientError>| matches!(r, Err(ClientError::Rejected { ref code, .. }) if code == "forbidden");
    assert_eq!(within(org.op(register("Bob"))).await, Ok(1));
    assert!(forbidden(within(ada.op(register("Cy"))).await));
    assert_eq!(within(ada.op(register("Ada"))).await, Ok(2));
    let drop_bob = TournamentOp::DropPlayer { name: "Bob".into() };
    assert!(forbidden(within(ada.op(drop_bob)).await));
    let others = TournamentOp::RecordResult {
        a: "Bob".into(),
        b: "Org".into(),
        winner: None,
    };
    assert!(forbidden(within(ada.op(others)).await));
    let own = TournamentOp::RecordResult {
        a: "Ada".into(),
        b: "Bob".into(),
        winner: Some("Ada".into()),
    };
    assert_eq!(within(ada.op(own)).await, Ok(3));
    // The spectator follows every op, may fetch, and may do none.
    for seq in 1..=3 {
        assert!(
            matches!(within(vic.next()).await, Ok(Incoming::Forward { seq: s, .. }) if s == seq)
        );
    }
    assert!(forbidden(within(vic.op(register("Vic"))).await));
    assert_eq!(within(vic.fetch()).await.unwrap().1.players.len(), 2);
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(r#"requests_refused_total{code="forbidden"} 4"#),
        "{metrics}"
    );

    // A token that expires in a second closes its connection then.
    let mut brief = join("Bea", "player", Duration::from_secs(2)).await;
    let ended = within(async {
        loop {
            match brief.next().await {
                Ok(Incoming::Forward { .. }) => continue,
                other => break other,
            }
        }
    })
    .await;
    assert!(
        matches!(&ended, Err(ClientError::Closed { code: Some(CLOSE_TOKEN_EXPIRED), reason }) if reason == "token expired"),
        "{ended:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_gathering_answers_503_and_ops_over_the_rate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .gathering(gathering_core::Config {
            max_connections: 2,
            max_ops_per_sec: 1,
            op_burst: 3,
            ..gathering_core::Config::default()
        })
        .start()
        .await
        .unwrap();
    let url = format!("ws://{}", server.addr);
    let g = GatheringId::parse("small-room").unwrap();
    let mut ada = within(Client::connect(&url, &g, Encoding::Json))
        .await
        .unwrap();
    within(ada.fetch()).await.unwrap();
    let _bob = within(Client::connect(&url, &g, Encoding::Json))
        .await
        .unwrap();
    // Both joined once the gathering counts them.
    let deadline = std::time::Instant::now() + BOUND;
    let (status, body) = loop {
        let (status, body) = upgrade(&server, "/gatherings/small-room", "").await;
        if status != 101 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""error":"full""#), "{body}");

    let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
    assert_eq!(within(ada.op(register("A"))).await, Ok(1));
    assert_eq!(within(ada.op(register("B"))).await, Ok(2));
    let third = within(ada.op(register("C"))).await;
    assert!(
        matches!(&third, Err(ClientError::Rejected { code, .. }) if code == "rate_limited"),
        "{third:?}"
    );
    // A fetch draws on the same tokens as ops.
    let fetch = within(ada.fetch()).await;
    assert!(
        matches!(&fetch, Err(ClientError::Rejected { code, .. }) if code == "rate_limited"),
        "{fetch:?}"
    );
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(r#"requests_refused_total{code="rate_limited"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"joins_refused_total{answer="full"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn at_the_bound_on_live_gatherings_the_least_recently_active_is_evicted() {
    use gathering_core::DisperseReason;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .gathering(gathering_core::Config {
            max_gatherings: 2,
            ..gathering_core::Config::default()
        })
        .start()
        .await
        .unwrap();
    let url = format!("ws://{}", server.addr);
    let id = |s: &str| GatheringId::parse(s).unwrap();
    let register = |name: &str| TournamentOp::RegisterPlayer { name: name.into() };
    let mut first = within(Client::connect(&url, &id("first"), Encoding::Json))
        .await
        .unwrap();
    assert_eq!(within(first.op(register("Ada"))).await, Ok(1));
    let mut second = within(Client::connect(&url, &id("second"), Encoding::Json))
        .await
        .unwrap();
    assert_eq!(within(second.op(register("Bob"))).await, Ok(1));
    // A third is wanted: the first, least recently active, makes room.
    let mut third = within(Client::connect(&url, &id("third"), Encoding::Json))
        .await
        .unwrap();
    assert_eq!(within(third.op(register("Cy"))).await, Ok(1));
    assert_eq!(
        within(first.next()).await,
        Ok(Incoming::Dispersed {
            reason: DisperseReason::Evicted,
            code: Some(gathering_core::protocol::CLOSE_DISPERSED)
        })
    );
    // Its state was saved: rejoining loads it (evicting the next oldest).
    let mut again = within(Client::connect(&url, &id("first"), Encoding::Json))
        .await
        .unwrap();
    assert!(
        within(again.fetch())
            .await
            .unwrap()
            .1
            .players
            .contains_key("Ada")
    );
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(r#"gatherings_dispersed_total{reason="evicted"}"#),
        "{metrics}"
    );
    server.shutdown().await;
}

/// What a page's session join is told: the first message, if any, and the
/// close code and reason.
async fn page_join(server: &Running, query: &str) -> (Option<String>, u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{}/gatherings/spring-open?{query}", server.addr);
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
    let mut first = None;
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(text))) => {
                first.get_or_insert(text.to_string());
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                return (first, frame.code.into(), frame.reason.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_pages_session_join_is_refused_by_a_close_code_it_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let other = token("Ada", "player", "autumn-open", HOUR);
    let (first, code, reason) = page_join(&server, "session=tab-1&token=nope").await;
    assert_eq!((first, code), (None, 4401), "{reason}");
    assert!(reason.contains("malformed"), "{reason}");
    let (first, code, reason) = page_join(&server, &format!("session=tab-1&token={other}")).await;
    assert_eq!((first, code), (None, 4403), "{reason}");
    let (_, code, _) = page_join(&server, "session=tab-1").await;
    assert_eq!(code, 4401, "no token");
    // The session belongs to its first member: another is closed 4403.
    let ada = token("Ada", "player", "*", HOUR);
    let bob = token("Bob", "player", "*", HOUR);
    let url = format!(
        "ws://{}/gatherings/spring-open?session=s&token={ada}",
        server.addr
    );
    let (mut held, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
    use futures_util::StreamExt;
    let welcome = within(held.next()).await.unwrap().unwrap();
    assert!(
        welcome.to_string().contains(r#""member":"Ada""#),
        "{welcome}"
    );
    let (first, code, _) = page_join(&server, &format!("session=s&token={bob}")).await;
    assert_eq!(code, 4403);
    assert!(first.unwrap().contains("session_taken"));
    // Without a session, today's answer: HTTP 401 before the upgrade.
    let (status, _) = upgrade(&server, "/gatherings/spring-open?token=nope", "").await;
    assert_eq!(status, 401);
    server.shutdown().await;
}
