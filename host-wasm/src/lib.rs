//! The in-browser gathering host: the same `gathering-core` state machines
//! as the server, driven by the page's event loop, with connections in the
//! page and storage in IndexedDB.
//!
//! From JavaScript (after `wasm-bindgen --target web`):
//!
//! ```js
//! import init, { Host } from "./pkg/gathering_wasm.js";
//! await init();
//! const host = await Host.open({ idleTimeoutMs: 60_000 });
//! const conn = host.join("spring-open");
//! conn.onmessage = (event) => console.log(JSON.parse(event.data));
//! conn.onclose = (code, reason) => console.log("closed", code, reason);
//! conn.send(JSON.stringify({ type: "op", id: 1, op: { type: "register_player", name: "Ada" } }));
//! ```
//!
//! Connections speak exactly the protocol of `docs/PROTOCOL.md`: JSON in
//! strings, postcard in `Uint8Array`s.

mod clock;
mod gathering_task;
mod hall_task;
mod options;
mod peer;
mod shared;
pub mod storage;

use std::rc::Rc;

use gathering_core::protocol::CLOSE_TOO_BIG;
use gathering_core::{Encoding, Frame, GatheringId, Inbound};
use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

pub use options::Options;

use crate::clock::{Clock, to_millis_f64};
use crate::hall_task::HallMail;
use crate::peer::Peer;
use crate::shared::Shared;
use crate::storage::{IndexedDb, Storage};

/// A hall and its gatherings, running in this page.
///
/// Contract: every gathering it spawns is loaded from its storage, persists
/// each op before acknowledging it, disperses after `idleTimeoutMs` without
/// client activity (telling each connection `dispersed`, then closing it with
/// 4000), and is respawned from what it persisted when someone joins again.
/// `shutdown()` disperses everything (reason `shutdown`, code 1001) and
/// resolves when all of it is persisted.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Host {
    shared: Rc<Shared>,
    stopped: async_channel::Receiver<()>,
}

#[wasm_bindgen]
impl Host {
    /// Opens a host with `options` (see [`Options`]); rejects with a message
    /// naming the problem (bad option, IndexedDB unavailable).
    pub async fn open(options: JsValue) -> Result<Host, JsError> {
        let options = Options::from_js(&options).map_err(|e| JsError::new(&e))?;
        let clock =
            Clock::new().ok_or_else(|| JsError::new("this page has no performance.now() clock"))?;
        let storage = match &options.database {
            Some(name) => Storage::IndexedDb(
                IndexedDb::open(name)
                    .await
                    .map_err(|e| JsError::new(&e.to_string()))?,
            ),
            None => Storage::Memory(Rc::default()),
        };
        let (hall_tx, hall_rx) = async_channel::unbounded();
        let shared = Rc::new(Shared::new(
            clock,
            options.config,
            options.max_frame_bytes,
            storage,
            hall_tx,
        ));
        let (stopped_tx, stopped) = async_channel::bounded(1);
        wasm_bindgen_futures::spawn_local(hall_task::run(hall_rx, shared.clone(), stopped_tx));
        Ok(Host { shared, stopped })
    }

    /// A new connection to gathering `id` (1–64 of `A-Z a-z 0-9 _ -`),
    /// spawning or respawning it as needed. Throws on a bad id or after
    /// `shutdown()`.
    pub fn join(&self, id: &str) -> Result<Connection, JsError> {
        let id = GatheringId::parse(id).map_err(|e| JsError::new(&e.to_string()))?;
        let conn = self.shared.new_conn();
        let peer = Rc::new(Peer::new(conn, id.clone()));
        let join = Inbound::Join {
            conn,
            encoding: Encoding::Json,
        };
        self.shared
            .hall
            .try_send(HallMail::Route(id, join, Some(peer.clone())))
            .map_err(|_| JsError::new("this host has shut down; open a new one"))?;
        Ok(Connection {
            peer,
            shared: self.shared.clone(),
        })
    }

    /// The live gatherings, sorted by id: `[{id, connections, seq,
    /// idleMs, dispersesInMs}]`, where `dispersesInMs` counts down to the
    /// idle dispersal if nothing happens meanwhile.
    pub fn gatherings(&self) -> Array {
        let now = self.shared.clock.now();
        let list = Array::new();
        for (id, status) in self.shared.registry.borrow().iter() {
            let entry = Object::new();
            let set = |k: &str, v: JsValue| {
                let _ = Reflect::set(&entry, &k.into(), &v);
            };
            set("id", id.as_str().into());
            set("connections", (status.connections.get() as f64).into());
            set("seq", (status.seq.get() as f64).into());
            let idle = now.saturating_since(status.last_activity.get());
            set("idleMs", (idle.as_secs_f64() * 1e3).into());
            let left = status.idle_deadline.get().saturating_since(now);
            set("dispersesInMs", (left.as_secs_f64() * 1e3).into());
            list.push(&entry);
        }
        list
    }

    /// Milliseconds from each idle or empty dispersal's deadline to the
    /// moment it was decided, since the last call (for benchmarks).
    #[wasm_bindgen(js_name = takeLateness)]
    pub fn take_lateness(&self) -> Vec<f64> {
        std::mem::take(&mut *self.shared.lateness.borrow_mut())
    }

    /// The page clock in milliseconds, as the host reads it.
    pub fn now(&self) -> f64 {
        to_millis_f64(self.shared.clock.now())
    }

    /// Disperses every gathering (reason `shutdown`), persisting each; the
    /// promise resolves once all are persisted and the database is closed.
    pub fn shutdown(&self) -> js_sys::Promise {
        let shared = self.shared.clone();
        let stopped = self.stopped.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let _ = shared.hall.send(HallMail::Shutdown).await;
            // Resolves with an error when the hall task drops its sender.
            let _ = stopped.recv().await;
            shared.storage.close();
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// One in-page connection to a gathering, with a WebSocket-like API.
///
/// Contract: `onmessage({data})` gets each server message (a JSON string, or
/// a `Uint8Array` of postcard); `onclose(code, reason)` is called exactly
/// once, after which nothing more arrives. Dispersal sends
/// `{"type":"dispersed",...}` and then closes with 4000.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Connection {
    peer: Rc<Peer>,
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl Connection {
    /// The gathering this connection joined.
    #[wasm_bindgen(getter)]
    pub fn gathering(&self) -> String {
        self.peer.gathering.as_str().to_owned()
    }

    /// Whether the connection has closed.
    #[wasm_bindgen(getter)]
    pub fn closed(&self) -> bool {
        self.peer.is_closed()
    }

    /// The message handler.
    #[wasm_bindgen(getter)]
    pub fn onmessage(&self) -> Option<Function> {
        self.peer.onmessage()
    }

    /// Sets the message handler, called with `{data}`.
    #[wasm_bindgen(setter)]
    pub fn set_onmessage(&self, f: Option<Function>) {
        self.peer.set_onmessage(f);
    }

    /// The close handler.
    #[wasm_bindgen(getter)]
    pub fn onclose(&self) -> Option<Function> {
        self.peer.onclose()
    }

    /// Sets the close handler, called once with `(code, reason)`.
    #[wasm_bindgen(setter)]
    pub fn set_onclose(&self, f: Option<Function>) {
        self.peer.set_onclose(f);
    }

    /// Sends a client message: a JSON string or a postcard `Uint8Array`.
    /// Throws if the connection is closed or `data` is neither; a frame over
    /// `maxFrameBytes` closes the connection with 1009, as on the server.
    pub fn send(&self, data: JsValue) -> Result<(), JsError> {
        if self.peer.is_closed() {
            return Err(JsError::new(
                "this connection is closed; join again to reach the gathering",
            ));
        }
        let frame = if let Some(text) = data.as_string() {
            Frame::Text(text.into())
        } else if let Some(bytes) = data.dyn_ref::<Uint8Array>() {
            Frame::Binary(bytes.to_vec().into())
        } else {
            return Err(JsError::new(
                "send takes a JSON string or a Uint8Array of postcard",
            ));
        };
        if frame.len() > self.shared.max_frame_bytes {
            self.close_with(CLOSE_TOO_BIG, "frame too large");
            return Ok(());
        }
        let conn = self.peer.conn;
        self.route(Inbound::Frame { conn, frame });
        Ok(())
    }

    /// Closes the connection (code 1000); `onclose` is called at once.
    pub fn close(&self) {
        self.close_with(1000, "closed by the page");
    }
}

impl Connection {
    fn close_with(&self, code: u16, reason: &str) {
        if self.peer.close(code, reason) {
            let conn = self.peer.conn;
            self.route(Inbound::Leave { conn });
        }
    }

    fn route(&self, inbound: Inbound) {
        let id = self.peer.gathering.clone();
        if self
            .shared
            .hall
            .try_send(HallMail::Route(id, inbound, None))
            .is_err()
        {
            // The host shut down under this connection.
            self.peer.close(1001, "host shut down");
        }
    }
}
