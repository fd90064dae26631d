//! The in-page host in a real browser (headless Chromium through
//! wasm-bindgen-test-runner): the JS-facing API, driven from Rust exactly as
//! a page would drive it. Real clock: short timeouts, generous bounds.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_timer::Delay;
use futures_util::future::{Either, select};
use std::cell::RefCell;
use std::rc::Rc;

use gathering_wasm::{Connection, export_host};

// The library exports no app: these tests export the shipped two, as a
// user's wasm crate (or the demo's, host-wasm/demo) does.
export_host!(Host, gathering_core::tournament::Tournament);
export_host!(ChatHost, gathering_core::chat::Chat);
use js_sys::{Function, Object, Reflect};
use serde_json::{Value, json};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

enum Event {
    Message(Value),
    Closed(u16, String),
}

/// A connection whose handlers feed a queue the test awaits.
struct Client {
    conn: Connection,
    events: async_channel::Receiver<Event>,
}

impl Client {
    fn join(host: &Host, id: &str) -> Client {
        Client::with(
            host.join(id, JsValue::UNDEFINED)
                .map_err(JsValue::from)
                .unwrap(),
        )
    }

    fn with(conn: Connection) -> Client {
        let (tx, events) = async_channel::unbounded();
        let on_message = {
            let tx = tx.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
                let data = Reflect::get(&event, &"data".into()).unwrap();
                let text = data.as_string().expect("JSON arrives as a string");
                let _ = tx.try_send(Event::Message(serde_json::from_str(&text).unwrap()));
            })
        };
        let on_close = Closure::<dyn FnMut(u16, String)>::new(move |code, reason| {
            let _ = tx.try_send(Event::Closed(code, reason));
        });
        conn.set_onmessage(Some(
            on_message.into_js_value().unchecked_into::<Function>(),
        ));
        conn.set_onclose(Some(on_close.into_js_value().unchecked_into::<Function>()));
        Client { conn, events }
    }

    fn send(&self, msg: Value) {
        self.conn
            .send(msg.to_string().into())
            .map_err(JsValue::from)
            .unwrap();
    }

    async fn event(&self, within: Duration) -> Option<Event> {
        let recv = std::pin::pin!(self.events.recv());
        match select(recv, Delay::new(within)).await {
            Either::Left((event, _)) => event.ok(),
            Either::Right(_) => None,
        }
    }

    /// The next message but presence (which only a session's connection
    /// gets; see `presence`).
    async fn message(&self) -> Value {
        loop {
            let msg = self.any_message().await;
            if !msg["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("presence"))
            {
                return msg;
            }
        }
    }

    async fn any_message(&self) -> Value {
        match self.event(PATIENCE).await {
            Some(Event::Message(v)) => v,
            Some(Event::Closed(code, reason)) => panic!("closed ({code} {reason}) instead"),
            None => panic!("no message within {PATIENCE:?}"),
        }
    }

    async fn closed(&self) -> (u16, String) {
        match self.event(PATIENCE).await {
            Some(Event::Closed(code, reason)) => (code, reason),
            Some(Event::Message(v)) => panic!("message {v} instead of the close"),
            None => panic!("not closed within {PATIENCE:?}"),
        }
    }

    /// Sends `op` and waits for its reply.
    async fn op(&self, id: u64, op: Value) -> Value {
        self.send(json!({"type": "op", "id": id, "op": op}));
        self.message().await
    }

    async fn state(&self) -> Value {
        self.send(json!({"type": "fetch", "id": 999}));
        let reply = self.message().await;
        assert_eq!(reply["type"], "state", "{reply}");
        reply["state"].clone()
    }
}

async fn open(options: Value) -> Host {
    let options = js_sys::JSON::parse(&options.to_string()).unwrap();
    Host::open(options).await.map_err(JsValue::from).unwrap()
}

/// Lateness in ms of every idle or empty dispersal, as `onDispersed` reports.
type Lateness = Rc<RefCell<Vec<f64>>>;

/// A host whose `onDispersed` handler records each dispersal's lateness.
async fn open_observed(options: Value) -> (Host, Lateness) {
    let options = js_sys::JSON::parse(&options.to_string()).unwrap();
    let lateness = Lateness::default();
    let seen = lateness.clone();
    let handler = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
        let reason = Reflect::get(&event, &"reason".into()).unwrap();
        if reason != "shutdown" {
            let late = Reflect::get(&event, &"lateMs".into()).unwrap();
            seen.borrow_mut().push(late.as_f64().unwrap());
        }
    });
    Reflect::set(&options, &"onDispersed".into(), &handler.into_js_value()).unwrap();
    let host = Host::open(options).await.map_err(JsValue::from).unwrap();
    (host, lateness)
}

fn register(name: &str) -> Value {
    json!({"type": "register_player", "name": name})
}

/// A database name no other test (or earlier run) uses.
fn fresh_db(what: &str) -> String {
    format!("gathering-test-{what}-{}", js_sys::Math::random())
}

async fn shutdown(host: &Host) {
    wasm_bindgen_futures::JsFuture::from(host.shutdown())
        .await
        .unwrap();
}

#[wasm_bindgen_test]
async fn ops_are_acked_and_forwarded_until_acknowledged() {
    let host = open(json!({"database": null, "retryIntervalMs": 50})).await;
    let ada = Client::join(&host, "club-night");
    let bob = Client::join(&host, "club-night");

    let ack = ada.op(1, register("Ada")).await;
    assert_eq!(ack, json!({"type": "ack", "id": 1, "seq": 1}));
    let forward = bob.message().await;
    assert_eq!(forward["type"], "forward");
    assert_eq!(forward["seq"], 1);
    assert_eq!(forward["op"], register("Ada"));

    // Not acknowledged: the same forward comes again, then stops once acked.
    let again = bob.message().await;
    assert_eq!(again, forward);
    bob.send(json!({"type": "ack", "seq": 1}));
    // Drain any re-send that crossed the ack, then expect silence.
    while let Some(Event::Message(m)) = bob.event(Duration::from_millis(300)).await {
        assert_eq!(m, forward);
    }
    assert!(bob.event(Duration::from_millis(400)).await.is_none());

    let state = bob.state().await;
    assert!(state["players"].get("Ada").is_some(), "{state}");
    let listed = host.gatherings();
    assert_eq!(listed.length(), 1);
    let entry: Object = listed.get(0).unchecked_into();
    assert_eq!(Reflect::get(&entry, &"id".into()).unwrap(), "club-night");
    assert_eq!(Reflect::get(&entry, &"connections".into()).unwrap(), 2.0);
    shutdown(&host).await;
}

#[wasm_bindgen_test]
async fn an_idle_gathering_disperses_once_with_code_4000() {
    let (host, lateness) = open_observed(json!({"database": null, "idleTimeoutMs": 300})).await;
    let started = host.now();
    let ada = Client::join(&host, "quiet");
    let bob = Client::join(&host, "quiet");
    // The op is processed after this instant: dispersal cannot come sooner
    // than 300 ms after it.
    let sent = host.now();
    ada.op(1, register("Ada")).await;
    for client in [&ada, &bob] {
        // Bob sees Ada's forward first (never acked: dispersal cancels it).
        let mut msg = client.message().await;
        if msg["type"] == "forward" {
            msg = client.message().await;
        }
        assert_eq!(msg, json!({"type": "dispersed", "reason": "idle"}));
        assert!(host.now() - sent >= 300.0, "dispersed early");
        let (code, reason) = client.closed().await;
        assert_eq!(code, 4000);
        assert!(reason.contains("idle"), "{reason}");
        assert!(client.conn.closed());
        // Exactly once: nothing follows, no retry of the forward either.
        assert!(client.event(Duration::from_millis(300)).await.is_none());
    }
    let lateness = lateness.borrow().clone();
    assert_eq!(lateness.len(), 1);
    assert!(lateness[0] >= 0.0 && lateness[0] < 1000.0, "{lateness:?}");
    assert!(host.now() - started < 4000.0);
    assert_eq!(host.gatherings().length(), 0);

    // Rejoining respawns it from what it persisted.
    let carol = Client::join(&host, "quiet");
    assert!(carol.state().await["players"].get("Ada").is_some());
    assert!(
        ada.conn.send("{}".into()).is_err(),
        "a closed connection refuses to send"
    );
    shutdown(&host).await;
}

#[wasm_bindgen_test]
async fn state_survives_the_host_in_indexeddb() {
    let db = fresh_db("reload");
    let host = open(json!({"database": db})).await;
    let ada = Client::join(&host, "spring-open");
    assert_eq!(ada.op(1, register("Ada")).await["type"], "ack");

    // An acked op is already durable: a second host on the same database
    // (as after a reload, with the first one never shut down) sees it.
    let other = open(json!({"database": db})).await;
    let peek = Client::join(&other, "spring-open");
    assert!(peek.state().await["players"].get("Ada").is_some());
    shutdown(&other).await;

    assert_eq!(ada.op(2, register("Bob")).await["type"], "ack");
    shutdown(&host).await;
    assert_eq!(
        ada.message().await,
        json!({"type": "dispersed", "reason": "shutdown"})
    );
    assert_eq!(ada.closed().await.0, 1001);
    drop(host);

    let host = open(json!({"database": db})).await;
    let again = Client::join(&host, "spring-open");
    let state = again.state().await;
    assert!(state["players"].get("Ada").is_some(), "{state}");
    assert!(state["players"].get("Bob").is_some(), "{state}");
    shutdown(&host).await;
    assert!(
        host.join("spring-open", JsValue::UNDEFINED).is_err(),
        "a shut-down host refuses joins"
    );
}

#[wasm_bindgen_test]
async fn bad_input_gets_an_error_and_the_connection_carries_on() {
    let host = open(json!({"database": null, "maxFrameBytes": 256})).await;
    let ada = Client::join(&host, "errors");
    ada.conn
        .send("this is not json".into())
        .map_err(JsValue::from)
        .unwrap();
    let reply = ada.message().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["code"], "bad_frame");

    let reply = ada
        .op(
            3,
            json!({"type": "record_result", "a": "Nobody", "b": "Ghost", "winner": null}),
        )
        .await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["id"], 3);
    assert!(
        reply["message"].as_str().unwrap().contains("Nobody"),
        "{reply}"
    );
    assert_eq!(ada.op(4, register("Ada")).await["type"], "ack");
    assert_eq!(ada.state().await["matches"], json!([]));

    assert!(host.join("not a valid id!", JsValue::UNDEFINED).is_err());
    assert!(ada.conn.send(JsValue::from_f64(7.0)).is_err());
    assert!(Host::open(JsValue::from_str("fast")).await.is_err());
    let bad = js_sys::JSON::parse(r#"{"idleTimeoutMs": -5}"#).unwrap();
    let err = Host::open(bad).await.map_err(JsValue::from).unwrap_err();
    let text = Reflect::get(&err, &"message".into())
        .unwrap()
        .as_string()
        .unwrap();
    assert!(text.contains("idleTimeoutMs"), "{text}");

    // Oversized: closed with 1009, as on the server.
    ada.send(json!({"type": "op", "id": 5, "op": register(&"x".repeat(300))}));
    assert_eq!(ada.closed().await.0, 1009);
    shutdown(&host).await;
}

#[wasm_bindgen_test]
async fn an_empty_gathering_disperses_after_its_grace() {
    let (host, lateness) = open_observed(json!({"database": null, "emptyGraceMs": 150})).await;
    let ada = Client::join(&host, "left-behind");
    ada.op(1, register("Ada")).await;
    ada.conn.close();
    assert_eq!(ada.closed().await.0, 1000);
    let mut waited = 0;
    while host.gatherings().length() > 0 && waited < 50 {
        Delay::new(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(host.gatherings().length(), 0, "still live after 5 s");
    assert_eq!(lateness.borrow().len(), 1);
    shutdown(&host).await;
}

/// The second app, exported with `export_host!`: ops, forwards,
/// `invalid_text`, idle dispersal, and a respawn from IndexedDB, which it
/// shares with the tournament without reading its records.
#[wasm_bindgen_test]
async fn a_chat_host_runs_the_chat_protocol() {
    let db = fresh_db("chat");
    let options =
        js_sys::JSON::parse(&json!({"database": db, "idleTimeoutMs": 300}).to_string()).unwrap();
    let host = ChatHost::open(options)
        .await
        .map_err(JsValue::from)
        .unwrap();
    let join = |id: &str| {
        Client::with(
            host.join(id, JsValue::UNDEFINED)
                .map_err(JsValue::from)
                .unwrap(),
        )
    };
    let ada = join("lobby");
    let bob = join("lobby");
    let say = |text: &str| json!({"type": "say", "text": text});

    assert_eq!(
        ada.op(1, say("hello")).await,
        json!({"type": "ack", "id": 1, "seq": 1})
    );
    let forward = bob.message().await;
    assert_eq!(
        (forward["type"].clone(), forward["op"].clone()),
        (json!("forward"), say("hello"))
    );
    bob.send(json!({"type": "ack", "seq": 1}));
    for bad in [String::new(), "x".repeat(1001)] {
        let err = ada.op(2, say(&bad)).await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "invalid_text");
    }
    let state = bob.state().await;
    assert_eq!(state["messages"].as_array().unwrap().len(), 1);
    assert_eq!(state["messages"][0]["text"], "hello");
    assert!(
        state["messages"][0]["from"]
            .as_str()
            .unwrap()
            .starts_with("conn-")
    );

    for client in [&ada, &bob] {
        let mut msg = client.message().await;
        while msg["type"] == "forward" {
            msg = client.message().await;
        }
        assert_eq!(msg, json!({"type": "dispersed", "reason": "idle"}));
        assert_eq!(client.closed().await.0, 4000);
    }
    let carol = join("lobby");
    assert_eq!(carol.state().await["messages"][0]["text"], "hello");
    drop(carol);
    let closed = ChatHost::shutdown(&host);
    wasm_bindgen_futures::JsFuture::from(closed).await.unwrap();

    // The tournament in the same database sees a gathering of that id as new.
    let tournament = open(json!({"database": db})).await;
    let t = Client::join(&tournament, "lobby");
    let state = t.state().await;
    assert_eq!(state["players"], json!({}), "{state}");
    shutdown(&tournament).await;
}

/// The op log in IndexedDB: ops logged one by one, compacted into a
/// snapshot every three, and a new host loads the snapshot and replays the
/// entries after it.
#[wasm_bindgen_test]
async fn the_op_log_and_its_snapshots_survive_in_indexeddb() {
    let db = fresh_db("log");
    let host = open(json!({"database": db, "snapshotOps": 3})).await;
    let ada = Client::join(&host, "logged");
    for i in 1..=7 {
        let ack = ada.op(i, register(&format!("p{i}"))).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    shutdown(&host).await;
    let again = open(json!({"database": db, "snapshotOps": 3})).await;
    let bob = Client::join(&again, "logged");
    let state = bob.state().await;
    assert_eq!(state["players"].as_object().unwrap().len(), 7, "{state}");
    assert_eq!(
        bob.op(8, register("p8")).await,
        json!({"type": "ack", "id": 8, "seq": 8})
    );
    shutdown(&again).await;
}

/// Two hosts on one database, as two tabs of a page: the first owns it,
/// the second's connections reach the owner's gatherings, so ops from
/// both are acknowledged and forwarded to each other. When the owner shuts
/// down, the follower takes over from IndexedDB: its connection closes
/// with 1012, and joining again finds every acknowledged op.
#[wasm_bindgen_test]
async fn one_tab_owns_a_database_and_another_takes_over() {
    let db = fresh_db("tabs");
    let first = open(json!({"database": db, "retryIntervalMs": 50})).await;
    let second = open(json!({"database": db, "retryIntervalMs": 50})).await;
    assert_eq!(
        (first.role(), second.role()),
        ("owner".into(), "follower".into())
    );

    let ada = Client::join(&first, "two-tabs");
    let bob = Client::join(&second, "two-tabs");
    assert_eq!(bob.state().await["players"], json!({}));
    assert_eq!(ada.op(1, register("Ada")).await["type"], "ack");
    let forward = bob.message().await;
    assert_eq!(
        (forward["type"].clone(), forward["seq"].clone()),
        (json!("forward"), json!(1))
    );
    bob.send(json!({"type": "ack", "seq": 1}));
    assert_eq!(
        bob.op(2, register("Bob")).await,
        json!({"type": "ack", "id": 2, "seq": 2})
    );
    let forward = ada.message().await;
    assert_eq!(forward["op"], register("Bob"));
    ada.send(json!({"type": "ack", "seq": 2}));
    // The follower lists the owner's gatherings (one call behind).
    second.gatherings();
    let mut listed = 0;
    for _ in 0..50 {
        listed = second.gatherings().length();
        if listed > 0 {
            break;
        }
        Delay::new(Duration::from_millis(20)).await;
    }
    assert_eq!(listed, 1);

    // A follower's frame over the limit closes it with 1009, as on the owner.
    let big = Client::join(&second, "two-tabs");
    big.send(json!({"type": "op", "id": 3, "op": register(&"x".repeat(2 << 20))}));
    assert_eq!(big.closed().await.0, 1009);

    shutdown(&first).await;
    assert_eq!(ada.message().await["type"], "dispersed");
    assert_eq!(ada.closed().await.0, 1001);
    // Bob's connection was the owner's: told of its shutdown, or of the
    // takeover, either way closed.
    let code = loop {
        match bob.event(PATIENCE).await {
            Some(Event::Closed(code, _)) => break code,
            Some(Event::Message(m)) => assert_eq!(m["type"], "dispersed", "{m}"),
            None => panic!("not closed within {PATIENCE:?}"),
        }
    };
    assert!(code == 1001 || code == 1012, "closed with {code}");
    let mut role = second.role();
    for _ in 0..50 {
        if role == "owner" {
            break;
        }
        Delay::new(Duration::from_millis(20)).await;
        role = second.role();
    }
    assert_eq!(role, "owner");
    let again = Client::join(&second, "two-tabs");
    let state = again.state().await;
    assert!(state["players"].get("Ada").is_some(), "{state}");
    assert!(state["players"].get("Bob").is_some(), "{state}");
    shutdown(&second).await;
}

/// `join(id, {sub, role})` passes the member to the app, through an owner
/// tab too: a player registers only itself, a spectator follows but may
/// not act, and a malformed member is refused at `join`.
#[wasm_bindgen_test]
async fn members_given_at_join_decide_what_an_op_may_do() {
    let db = fresh_db("members");
    let owner = open(json!({"database": db})).await;
    let follower = open(json!({"database": db})).await;
    let as_member = |host: &Host, sub: &str, role: &str| {
        let member = js_sys::JSON::parse(&json!({"sub": sub, "role": role}).to_string()).unwrap();
        Client::with(host.join("members", member).map_err(JsValue::from).unwrap())
    };
    let ada = as_member(&owner, "Ada", "player");
    let bob = as_member(&follower, "Bob", "player");
    let vic = as_member(&follower, "Vic", "spectator");
    let refused = ada.op(1, register("Bob")).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{refused}"
    );
    assert_eq!(ada.op(2, register("Ada")).await["type"], "ack");
    assert_eq!(bob.message().await["type"], "forward");
    let refused = bob.op(3, register("Ada")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Vic follows: it receives the forward, but may not register.
    assert_eq!(vic.message().await["type"], "forward");
    let refused = vic.op(4, register("Vic")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(vic.state().await["players"].as_object().unwrap().len(), 1);

    for bad in [
        json!({"sub": "", "role": "player"}),
        json!({"sub": "Ada"}),
        json!("Ada"),
    ] {
        let bad = js_sys::JSON::parse(&bad.to_string()).unwrap();
        assert!(owner.join("members", bad).is_err());
    }
    shutdown(&follower).await;
    shutdown(&owner).await;
}

/// `join(id, {session, since, epoch})`: welcomed, an op retried after the
/// host is reopened from IndexedDB is acked with its first seq and not
/// applied again, a follower tab's session resumes through the owner, and
/// bad session options are refused at `join`.
#[wasm_bindgen_test]
async fn sessions_apply_ops_once_and_resume_in_both_tabs() {
    let db = fresh_db("sessions");
    let join = |host: &Host, options: Value| {
        let options = js_sys::JSON::parse(&options.to_string()).unwrap();
        Client::with(
            host.join("sessions", options)
                .map_err(JsValue::from)
                .unwrap(),
        )
    };
    let host = open(json!({"database": db, "retryIntervalMs": 50})).await;
    let ada = join(&host, json!({"session": "tab-a"}));
    let welcome = ada.message().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(
        (welcome["seq"].clone(), welcome["last_op"].clone()),
        (json!(0), json!(null))
    );
    let epoch = welcome["epoch"].as_u64().unwrap();
    assert_eq!(
        ada.op(1, register("Ada")).await,
        json!({"type": "ack", "id": 1, "seq": 1})
    );
    shutdown(&host).await;

    // Reopened: the same epoch, the session remembered in IndexedDB.
    let owner = open(json!({"database": db, "retryIntervalMs": 50})).await;
    let follower = open(json!({"database": db, "retryIntervalMs": 50})).await;
    assert_eq!(follower.role(), "follower");
    let ada = join(&owner, json!({"session": "tab-a"}));
    let welcome = ada.message().await;
    assert_eq!(
        (welcome["epoch"].as_u64(), welcome["last_op"].clone()),
        (Some(epoch), json!(1))
    );
    assert_eq!(
        ada.op(1, register("Ada")).await,
        json!({"type": "ack", "id": 1, "seq": 1})
    );
    assert_eq!(ada.op(2, register("Bob")).await["seq"], 2);
    // A follower's session that saw op 1 resumes with op 2, through the owner.
    let bob = join(
        &follower,
        json!({"session": "tab-b", "since": 1, "epoch": epoch}),
    );
    assert_eq!(bob.message().await["type"], "welcome");
    let forward = bob.message().await;
    assert_eq!(
        (forward["type"].clone(), forward["seq"].clone()),
        (json!("forward"), json!(2))
    );
    bob.send(json!({"type": "ack", "seq": 2}));
    // Presence, through the owner: Bob's typing reaches Ada.
    bob.send(json!({"type": "presence", "data": {"looking_at": "Ada"}}));
    let seen = loop {
        let msg = ada.any_message().await;
        if msg["type"] == "presence_diff" && msg["joins"].get("tab-b").is_some() {
            break msg["joins"]["tab-b"].clone();
        }
    };
    assert!(
        seen.is_null() || seen == json!({"looking_at": "Ada"}),
        "{seen}"
    );
    // Another epoch: the whole state.
    let late = join(
        &follower,
        json!({"session": "tab-c", "since": 1, "epoch": epoch + 1}),
    );
    assert_eq!(late.message().await["type"], "welcome");
    let resync = late.message().await;
    assert_eq!(
        (resync["type"].clone(), resync["seq"].clone()),
        (json!("resync"), json!(2))
    );
    for bad in [
        json!({"session": "a b"}),
        json!({"session": 7}),
        json!({"since": 3}),
        json!({"session": "s", "epoch": -1}),
    ] {
        let options = js_sys::JSON::parse(&bad.to_string()).unwrap();
        assert!(owner.join("sessions", options).is_err(), "{bad}");
    }
    shutdown(&follower).await;
    shutdown(&owner).await;
}
