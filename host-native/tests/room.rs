//! The Rust client's `Room` against the real server killed with -9 and
//! restarted twice mid-stream, as the TypeScript client's test does: three
//! rooms submit 2,000 ops each, 16 in flight; every op settles once, the
//! state holds each once, and each room's op events cover every seq once,
//! in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gathering_core::client::{RoomConfig, RoomEvent, Status};
use gathering_core::tournament::{Tournament, TournamentOp};
use gathering_core::{Encoding, GatheringId};
use gathering_native::client::{Room, RoomOptions};

mod common;

const ROOMS: usize = 3;
const OPS: usize = 2000;
const IN_FLIGHT: usize = 16;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn op_of(i: usize, k: usize) -> TournamentOp {
    let (a, b) = (format!("a{i}"), format!("b{i}"));
    match k {
        0 => TournamentOp::RegisterPlayer { name: a },
        1 => TournamentOp::RegisterPlayer { name: b },
        _ => {
            let winner = [Some(a.clone()), Some(b.clone()), None][k % 3].clone();
            TournamentOp::RecordResult { a, b, winner }
        }
    }
}

fn options(encoding: Encoding) -> RoomOptions<gathering_core::tournament::TournamentPresence> {
    RoomOptions {
        encoding,
        config: RoomConfig {
            connect_timeout: gathering_core::Duration::from_secs(2),
            ..RoomConfig::default()
        },
        backoff: Some((
            gathering_core::Duration::from_millis(50),
            gathering_core::Duration::from_millis(500),
        )),
        seed: Some(1),
        ..RoomOptions::default()
    }
}

/// Every op event follows the last state with no gap or repeat; the last seq.
fn check_history(
    events: &[RoomEvent<
        TournamentOp,
        Tournament,
        gathering_core::tournament::TournamentPresence,
    >],
) -> (u64, Vec<(u64, bool)>) {
    let mut expected = None;
    let mut ops = Vec::new();
    for event in events {
        match event {
            RoomEvent::State { seq, .. } => expected = Some(seq + 1),
            RoomEvent::Op { seq, own, .. } => {
                assert_eq!(Some(*seq), expected, "op events in seq order, once each");
                expected = Some(seq + 1);
                ops.push((*seq, *own));
            }
            _ => {}
        }
    }
    (expected.unwrap() - 1, ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_mid_stream_each_op_applies_and_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = common::server_at(dir.path(), "127.0.0.1:0", &[]);
    let mut server = Server(child);
    let url = format!("ws://{addr}");
    let id = GatheringId::parse("kill9").unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut rooms = Vec::new();
    let mut runs = Vec::new();
    for i in 0..ROOMS {
        // One room speaks JSON, the others postcard.
        let encoding = if i == 0 {
            Encoding::Json
        } else {
            Encoding::Postcard
        };
        let room = Room::<Tournament>::join(&url, &id, options(encoding)).unwrap();
        let sender = room.sender();
        rooms.push(room);
        let next = Arc::new(AtomicUsize::new(0));
        let seqs = Arc::new(std::sync::Mutex::new(vec![None; OPS]));
        let mut workers = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (next, seqs, sender, done) =
                (next.clone(), seqs.clone(), sender.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= OPS {
                        return;
                    }
                    let seq = sender
                        .op(op_of(i, k))
                        .await
                        .unwrap_or_else(|e| panic!("room {i} op {k}: {e:?}"));
                    assert!(
                        seqs.lock().unwrap()[k].replace(seq).is_none(),
                        "settled once"
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        runs.push((workers, seqs));
    }
    for at in [0.3, 0.65] {
        let target = (at * (ROOMS * OPS) as f64) as usize;
        tokio::time::timeout(Duration::from_secs(120), async {
            while done.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("progress");
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        let (child, _) = common::server_at(dir.path(), &addr.to_string(), &[]);
        server = Server(child);
    }
    let mut all = Vec::new();
    let mut mine = Vec::new();
    for (workers, seqs) in runs {
        for w in workers {
            tokio::time::timeout(Duration::from_secs(120), w)
                .await
                .unwrap()
                .unwrap();
        }
        let seqs: Vec<u64> = seqs.lock().unwrap().iter().map(|s| s.unwrap()).collect();
        all.extend(seqs.iter().copied());
        mine.push(seqs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=(ROOMS * OPS) as u64).collect::<Vec<_>>(),
        "each op has its own seq; nothing else applied"
    );

    let last = (ROOMS * OPS) as u64;
    for (i, (mut room, seqs)) in rooms.into_iter().zip(mine).enumerate() {
        let mut events = Vec::new();
        let mut reconnected = false;
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let event = room.next().await.unwrap();
                if let RoomEvent::Status(s) = &event {
                    reconnected |= s.status == Status::Reconnecting;
                }
                let at_last = matches!(event, RoomEvent::Op { seq, .. } if seq == last);
                events.push(event);
                if at_last {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("room {i} saw every op"));
        assert!(reconnected, "room {i} reconnected");
        let (seen, ops) = check_history(&events);
        assert_eq!(seen, last);
        for (seq, own) in ops {
            assert_eq!(own, seqs.contains(&seq), "room {i} seq {seq} own flag");
        }
    }

    // The state holds each op once: the results add up.
    let mut fresh = Room::<Tournament>::join(&url, &id, options(Encoding::Postcard)).unwrap();
    let state = loop {
        if let Some(RoomEvent::State { state, .. }) = fresh.next().await {
            break state;
        }
    };
    let json = serde_json::to_value(&state).unwrap();
    let wins = |r: usize| (2..OPS).filter(|k| k % 3 == r).count() as u64;
    for i in 0..ROOMS {
        let (a, b) = (
            &json["players"][format!("a{i}")],
            &json["players"][format!("b{i}")],
        );
        assert_eq!(
            (
                a["wins"].as_u64(),
                a["losses"].as_u64(),
                a["draws"].as_u64()
            ),
            (Some(wins(0)), Some(wins(1)), Some(wins(2)))
        );
        assert_eq!(
            (
                b["wins"].as_u64(),
                b["losses"].as_u64(),
                b["draws"].as_u64()
            ),
            (Some(wins(1)), Some(wins(0)), Some(wins(2)))
        );
    }
    assert_eq!(json["matches"].as_array().unwrap().len(), ROOMS * (OPS - 2));
    fresh.leave();
}

/// An expired token (4003) is replaced from the room's token source and
/// nothing is lost; presence reaches the other room and leaves with the
/// room that left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_replaced_and_presence_comes_and_goes() {
    use gathering_core::client::RoomStatus;
    use gathering_core::tournament::TournamentPresence;
    use gathering_native::{Jwt, Server};
    const SECRET: &[u8] = b"a secret for the room tests";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::<Tournament>::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir.path())
        .authenticator(Jwt::new(SECRET))
        .start()
        .await
        .unwrap();
    let url = format!("ws://{}", server.addr);
    let id = GatheringId::parse("tokens").unwrap();
    let minted = Arc::new(AtomicUsize::new(0));
    let source = |sub: &'static str,
                  ttl: Duration,
                  count: Option<Arc<AtomicUsize>>|
     -> gathering_native::client::TokenSource {
        Arc::new(move || {
            // Two short-lived tokens, then long ones: two expiries.
            let n = count
                .as_ref()
                .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed));
            let ttl = if n < 2 {
                ttl
            } else {
                Duration::from_secs(3600)
            };
            Jwt::new(SECRET).mint_for(sub, "organizer", "*", ttl).ok()
        })
    };
    let mut ada = Room::<Tournament>::join(
        &url,
        &id,
        RoomOptions {
            token: Some(source("Ada", Duration::from_secs(1), Some(minted.clone()))),
            ..options(Encoding::Postcard)
        },
    )
    .unwrap();
    let mut bob = Room::<Tournament>::join(
        &url,
        &id,
        RoomOptions {
            token: Some(source("Bob", Duration::from_secs(3600), None)),
            presence: Some(TournamentPresence { looking_at: None }),
            ..options(Encoding::Postcard)
        },
    )
    .unwrap();
    // Ops across the expiries of Ada's two one-second tokens.
    let started = std::time::Instant::now();
    let mut seqs = Vec::new();
    let mut k = 0;
    while minted.load(Ordering::Relaxed) < 3 || ada.status().status != Status::Open {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "two expiries within 20 s"
        );
        seqs.push(
            ada.op(TournamentOp::RegisterPlayer {
                name: format!("p{k}"),
            })
            .await
            .unwrap(),
        );
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every op once, in order"
    );
    assert!(
        minted.load(Ordering::Relaxed) >= 2,
        "a fresh token after 4003"
    );
    let mut statuses = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), ada.next()).await {
        if let RoomEvent::Status(RoomStatus { status, code, .. }) = event {
            statuses.push((status, code));
        }
    }
    assert!(
        statuses.contains(&(Status::Reconnecting, Some(4003))),
        "{statuses:?}"
    );

    ada.set_presence(TournamentPresence {
        looking_at: Some("p0".into()),
    });
    let seen = |want: &'static str, present: bool| {
        move |event: &RoomEvent<TournamentOp, Tournament, TournamentPresence>| match event {
            RoomEvent::Presence(members) => {
                let shown = members.get(want).is_some_and(|p| {
                    p.as_ref()
                        .is_some_and(|p| p.looking_at.as_deref() == Some("p0"))
                });
                shown == present && (present || !members.contains_key(want))
            }
            _ => false,
        }
    };
    wait_for(&mut bob, "Bob sees where Ada looks", seen("Ada", true)).await;
    ada.leave();
    wait_for(&mut bob, "Ada's leave reaches Bob", seen("Ada", false)).await;
    bob.leave();
    server.shutdown().await;
}

/// Reads `room`'s events until one `matches`, within 5 s (a leave that
/// is not clean would show only after the 10 s presence grace).
async fn wait_for(
    room: &mut Room<Tournament>,
    what: &str,
    matches: impl Fn(
        &RoomEvent<TournamentOp, Tournament, gathering_core::tournament::TournamentPresence>,
    ) -> bool,
) {
    let found = async {
        loop {
            let event = room.next().await.expect("the room goes on");
            if matches(&event) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), found)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 5 s, under the presence grace of 10 s"));
}
