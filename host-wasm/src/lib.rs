//! The in-browser gathering host: the shared driver of `gathering-driver`
//! on the page's event loop, with connections in the page and storage in
//! IndexedDB, for any application.
//!
//! [`Host<A>`] is the host in Rust; [`export_host!`] exports it to
//! JavaScript as a class for one app, from the wasm crate that links this
//! one (the demo page's, `host-wasm/demo`, exports `TournamentHost` and
//! `ChatHost`). From JavaScript (after `wasm-bindgen --target web`):
//!
//! ```js
//! import init, { TournamentHost } from "./pkg/gathering_wasm.js";
//! await init();
//! const host = await TournamentHost.open({ idleTimeoutMs: 60_000 });
//! const conn = host.join("spring-open");
//! conn.onmessage = (event) => console.log(JSON.parse(event.data));
//! conn.onclose = (code, reason) => console.log("closed", code, reason);
//! conn.send(JSON.stringify({ type: "op", id: 1, op: { type: "register_player", name: "Ada" } }));
//! ```
//!
//! Connections speak exactly the protocol of `docs/PROTOCOL.md`: JSON in
//! strings, postcard in `Uint8Array`s.

mod clock;
mod link;
mod listing;
mod member;
mod options;
mod peer;
mod runtime;
pub mod storage;
mod tabs;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use std::sync::Arc;

use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_TOO_BIG};
use gathering_core::{App, Encoding, GatheringId, Inbound};
use gathering_driver::{HallMail, HallState, hall_task};
use js_sys::{Array, Function};
use wasm_bindgen::prelude::*;

pub use options::Options;

use crate::clock::Clock;
use crate::peer::{Peer, PeerRef, Upstream, data_frame};
use crate::runtime::{Shared, Wasm};
use crate::storage::{IndexedDb, Storage};
use crate::tabs::{Role, Tabs};

/// A hall and its gatherings of application `A`, running in this page.
///
/// Contract: every gathering it spawns is loaded from its storage, persists
/// each op before acknowledging it, disperses after `idleTimeoutMs` without
/// client activity (telling each connection `dispersed`, then closing it with
/// 4000), and is respawned from what it persisted when someone joins again.
/// `shutdown()` disperses everything (reason `shutdown`, code 1001) and
/// resolves when all of it is persisted. Export it to JavaScript with
/// [`export_host!`].
///
/// With IndexedDB, one tab of the origin runs the gatherings of a database
/// at a time (the owner, holding a Web Lock); in the others (followers),
/// `join` reaches the owner's gatherings over a `BroadcastChannel`, with
/// the same protocol. When the owner goes away a follower takes over,
/// loading from IndexedDB, and the connections the old owner served close
/// with 1012: join again. A follower's `onDispersed` is not called (the
/// owner's is), and its `gatherings()` lags the owner's by one call.
pub struct Host<A: App> {
    rt: Wasm<A>,
    stopped: async_channel::Receiver<()>,
    tabs: Option<Rc<Tabs>>,
}

impl<A: App> std::fmt::Debug for Host<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("app", &A::NAME).finish()
    }
}

impl<A: App> Host<A> {
    /// Opens a host with `options` (see [`Options`]); rejects with a message
    /// naming the problem (bad option, IndexedDB unavailable).
    pub async fn open(options: JsValue) -> Result<Self, JsError> {
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
        let (mailbox, hall_rx) = async_channel::unbounded();
        let (hall, settled) = HallState::new();
        let rt = Wasm(Rc::new(Shared {
            clock,
            config: options.config.into(),
            max_frame_bytes: options.max_frame_bytes,
            storage,
            mailbox,
            hall: RefCell::new(hall),
            registry: RefCell::new(BTreeMap::new()),
            on_dispersed: options.on_dispersed,
            next_conn: std::cell::Cell::new(1),
        }));
        let (stopped_tx, stopped) = async_channel::bounded::<()>(1);
        let hall = hall_task(rt.clone(), hall_rx, settled);
        wasm_bindgen_futures::spawn_local(async move {
            hall.await;
            // How `shutdown()` learns that everything is persisted.
            drop(stopped_tx);
        });
        // In memory, nothing is shared with other tabs.
        let tabs = match &options.database {
            Some(name) => Tabs::join(name, rt.clone()).await,
            None => None,
        };
        Ok(Host { rt, stopped, tabs })
    }

    /// `"owner"` if this tab runs the gatherings (always, in memory or
    /// without Web Locks), `"follower"` if another tab does.
    pub fn role(&self) -> &'static str {
        match self.tabs.as_ref().map(|t| t.role()) {
            Some(Role::Follower) => "follower",
            Some(Role::Owner) | None => "owner",
        }
    }

    /// A new connection to gathering `id` (1–64 of `A-Z a-z 0-9 _ -`),
    /// spawning or respawning it as needed. `options` (all optional):
    /// `sub` and `role`, the member the app decides with (omitted, the
    /// connection is a member of its own with every right, as on an open
    /// server); `session` (1–64 of the same), and `since` and `epoch` to
    /// resume, as the server's `?session=S&since=K&epoch=E` (see
    /// docs/PROTOCOL.md, Sessions). Fails on a bad id or option, or after
    /// `shutdown()`.
    pub fn join(&self, id: &str, options: &JsValue) -> Result<Connection, JsError> {
        let id = GatheringId::parse(id).map_err(|e| JsError::new(&e.to_string()))?;
        let (member, session) = member::join_from_js(options).map_err(|e| JsError::new(&e))?;
        let shared = &self.rt.0;
        if shared.mailbox.is_closed() {
            return Err(JsError::new("this host has shut down; open a new one"));
        }
        let conn = self.rt.next_conn();
        if let Some(tabs) = self.tabs.as_ref().filter(|t| t.role() == Role::Follower) {
            return Ok(Connection {
                peer: tabs.follow(conn, id, member.as_ref(), session.as_ref()),
                max_frame_bytes: shared.max_frame_bytes,
            });
        }
        let member = member.map(Arc::new);
        let peer = Rc::new(Peer::new(
            conn,
            id.clone(),
            member.clone(),
            session.as_ref().map(|s| s.session.clone()),
            Upstream::Hall(shared.mailbox.clone()),
        ));
        let join = Inbound::Join {
            conn,
            encoding: Encoding::Json,
            member,
            session: session.map(Box::new),
        };
        shared
            .mailbox
            .try_send(HallMail::Route(id, join, Some(PeerRef(peer.clone()))))
            .map_err(|_| JsError::new("this host has shut down; open a new one"))?;
        Ok(Connection {
            peer,
            max_frame_bytes: shared.max_frame_bytes,
        })
    }

    /// The live gatherings, sorted by id: `[{id, connections, seq,
    /// idleMs, dispersesInMs}]`, where `dispersesInMs` counts down to the
    /// idle dispersal if nothing happens meanwhile.
    pub fn gatherings(&self) -> Array {
        match self.tabs.as_ref().filter(|t| t.role() == Role::Follower) {
            Some(tabs) => tabs.listing(),
            None => listing::to_array(&listing::listed(&self.rt)),
        }
    }

    /// The page clock in milliseconds, as the host reads it.
    pub fn now(&self) -> f64 {
        self.rt.now_ms()
    }

    /// Disperses every gathering (reason `shutdown`), persisting each; the
    /// promise resolves once all are persisted and the database is closed.
    pub fn shutdown(&self) -> js_sys::Promise {
        let rt = self.rt.clone();
        let stopped = self.stopped.clone();
        let tabs = self.tabs.clone();
        if let Some(tabs) = &tabs {
            tabs.stop();
        }
        wasm_bindgen_futures::future_to_promise(async move {
            let _ = rt.0.mailbox.send(HallMail::Shutdown).await;
            // Resolves with an error when the hall's task drops its sender.
            let _ = stopped.recv().await;
            rt.0.storage.close();
            // Only now may another tab take over: everything is persisted.
            if let Some(tabs) = tabs {
                tabs.shutdown();
            }
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// Exports [`Host`] of an application to JavaScript as class `$name`, with
/// `static async open(options)`, `join(id)`, `gatherings()`, `role`,
/// `now()` and `shutdown()` (see [`Host`]); connections are this crate's exported
/// `Connection` class. The calling crate depends on `wasm-bindgen` at this
/// crate's version (what the macro expands to derives through it by name).
///
/// ```ignore
/// gathering_wasm::export_host!(ChatHost, gathering_core::chat::Chat);
/// ```
// Skipped by rustfmt: it indents the attributes' arguments further on
// every run.
#[rustfmt::skip]
#[macro_export]
macro_rules! export_host {
    ($name:ident, $app:ty) => {
        #[doc = concat!("The in-page host of `", stringify!($app), "`: see `gathering_wasm::Host`.")]
        #[$crate::__private::wasm_bindgen::prelude::wasm_bindgen(
            wasm_bindgen = $crate::__private::wasm_bindgen
        )]
        #[derive(Debug)]
        pub struct $name($crate::Host<$app>);

        // The futures path is for `open`; wasm-bindgen's expansion also
        // binds it where no method needs it.
        #[allow(unused_variables)]
        #[$crate::__private::wasm_bindgen::prelude::wasm_bindgen(
            wasm_bindgen = $crate::__private::wasm_bindgen,
            wasm_bindgen_futures = $crate::__private::wasm_bindgen_futures
        )]
        impl $name {
            /// Opens a host with `options`; rejects with a message naming the problem.
            pub async fn open(
                options: $crate::__private::wasm_bindgen::JsValue,
            ) -> ::std::result::Result<$name, $crate::__private::wasm_bindgen::JsError> {
                $crate::Host::<$app>::open(options).await.map($name)
            }

            /// A new connection to gathering `id`, with `options` `{sub, role,
            /// session, since, epoch}` (each optional: without a member, every
            /// right; with a session, welcomed, resumed, its ops applied once);
            /// throws on a bad id or option, or after `shutdown()`.
            pub fn join(
                &self,
                id: &str,
                options: $crate::__private::wasm_bindgen::JsValue,
            ) -> ::std::result::Result<$crate::Connection, $crate::__private::wasm_bindgen::JsError>
            {
                self.0.join(id, &options)
            }

            /// The live gatherings, sorted by id.
            pub fn gatherings(&self) -> $crate::__private::js_sys::Array {
                self.0.gatherings()
            }

            /// `"owner"` if this tab runs the gatherings, `"follower"` if another tab does.
            #[wasm_bindgen(getter)]
            pub fn role(&self) -> ::std::string::String {
                self.0.role().into()
            }

            /// The page clock in milliseconds, as the host reads it.
            pub fn now(&self) -> f64 {
                self.0.now()
            }

            /// Disperses and persists every gathering; resolves when done.
            pub fn shutdown(&self) -> $crate::__private::js_sys::Promise {
                self.0.shutdown()
            }
        }
    };
}

/// What [`export_host!`] expands to needs, so that its caller needs none
/// of it among its own dependencies but `wasm-bindgen`.
#[doc(hidden)]
pub mod __private {
    pub use js_sys;
    pub use wasm_bindgen;
    pub use wasm_bindgen_futures;
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
    max_frame_bytes: usize,
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
        let Some(frame) = data_frame(&data) else {
            return Err(JsError::new(
                "send takes a JSON string or a Uint8Array of postcard",
            ));
        };
        if frame.len() > self.max_frame_bytes {
            self.peer.close(CLOSE_TOO_BIG, "frame too large");
            return Ok(());
        }
        if !self.peer.route(frame) {
            // The host shut down under this connection.
            self.peer.close(CLOSE_GOING_AWAY, "host shut down");
        }
        Ok(())
    }

    /// Closes the connection (code 1000); `onclose` is called at once.
    pub fn close(&self) {
        self.peer.close(CLOSE_NORMAL, "closed by the page");
    }
}
