//! One owner tab per database. Every tab of an origin sees the same
//! IndexedDB, and two tabs that each ran a gathering from it would each
//! write their own ops over the other's. So only the tab holding the Web
//! Lock `gathering/{database}/{app}` runs the hall: the owner. The other
//! tabs (followers) reach it over a `BroadcastChannel` of the same name:
//! their connections' frames go to the owner, its replies and forwards come
//! back. When the owner goes away (closed, reloaded, shut down) the browser
//! hands the lock to a waiting tab, which loads the gatherings from
//! IndexedDB as any spawn does; connections the old owner served are
//! closed with 1012 and join again, as after a server restart.
//!
//! On the channel, every message is an object with `t` (its kind) and
//! `from` (the sending tab): followers send `hello`, `join` (`conn`, `id`),
//! `frame` (`conn`, `data`), `leave` (`conn`) and `list`; the owner sends
//! `owner` (to a `hello`, or to everyone when it takes over), `out`
//! (`conn`, `data`), `close` (`conn`, `code`, `reason`) and `listing`
//! (`list`), each with `to`, the follower it is for.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_timer::Delay;
use futures_util::future::{Either, select};
use gathering_core::protocol::{CLOSE_GOING_AWAY, CLOSE_TOO_BIG};
use gathering_core::{App, ConnId, Encoding, GatheringId, Inbound, Member};
use gathering_driver::HallMail;
use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{AbortController, BroadcastChannel, MessageEvent};

use crate::peer::{Peer, PeerRef, Upstream, data_frame};
use crate::runtime::Wasm;

/// Close code of the connections an owner tab served when it goes away
/// (RFC 6455 "service restart"): join again, and the new owner serves.
pub const CLOSE_OWNER_GONE: u16 = 1012;

/// The reason of that close.
const OWNER_GONE: &str = "the tab that ran this gathering went away; join again";

/// How long a tab that finds the lock taken waits for the owner to answer
/// (or for the lock) before it serves as a follower anyway.
const HELLO_PATIENCE: Duration = Duration::from_secs(2);

/// What a tab is for its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It runs the hall (or nobody else can: memory only, or no Web Locks).
    Owner,
    /// Another tab runs the hall; its connections go there.
    Follower,
}

/// A tab's end of the database's channel, as its connections use it.
#[derive(Clone, Debug)]
pub struct Link {
    channel: BroadcastChannel,
    tab: Rc<str>,
}

impl Link {
    /// Posts a message of kind `t` from this tab with `fields`; `false`
    /// if the channel is closed.
    fn post(&self, t: &str, fields: &[(&str, JsValue)]) -> bool {
        let msg = Object::new();
        set(&msg, "t", &t.into());
        set(&msg, "from", &(*self.tab).into());
        for (name, value) in fields {
            set(&msg, name, value);
        }
        self.channel.post_message(&msg).is_ok()
    }

    /// Asks the owner to join `conn` to gathering `id`, as `member` if
    /// given.
    fn join(&self, conn: ConnId, id: &GatheringId, member: Option<&Member>) -> bool {
        let member = member.map_or(JsValue::UNDEFINED, crate::member::to_js);
        self.post(
            "join",
            &[
                ("conn", conn_value(conn)),
                ("id", id.as_str().into()),
                ("member", member),
            ],
        )
    }

    /// Sends `data` from `conn` to the owner.
    pub fn frame(&self, conn: ConnId, data: &JsValue) -> bool {
        self.post(
            "frame",
            &[("conn", conn_value(conn)), ("data", data.clone())],
        )
    }

    /// Tells the owner `conn` closed.
    pub fn leave(&self, conn: ConnId) {
        self.post("leave", &[("conn", conn_value(conn))]);
    }
}

/// One tab's part in the database's ownership.
pub(crate) struct Tabs {
    link: Link,
    role: Cell<Role>,
    stopping: Cell<bool>,
    /// Owner: resolves the promise that holds the lock, releasing it.
    release: RefCell<Option<Function>>,
    /// Cancels this tab's waiting request for the lock.
    abort: AbortController,
    /// Follower: its connections, by id, which the owner serves.
    proxied: RefCell<BTreeMap<u64, Rc<Peer>>>,
    /// Owner: other tabs' connections, by tab and their id there.
    served: RefCell<BTreeMap<(String, u64), Rc<Peer>>>,
    /// Follower: the owner's latest listing of live gatherings.
    listing: RefCell<Array>,
    /// Woken when this tab learns who owns the database.
    settled: async_channel::Sender<()>,
    /// Handlers the browser calls, dropped at shutdown.
    handlers: RefCell<Vec<JsValue>>,
}

impl Tabs {
    /// Takes part in the ownership of `database` for app `A`'s host `rt`:
    /// owns it if its lock is free, else follows its owner (and waits for
    /// the lock). `None` where the browser has no Web Locks or
    /// `BroadcastChannel`: the host then runs alone, as before.
    pub async fn join<A: App>(database: &str, rt: Wasm<A>) -> Option<Rc<Self>> {
        let locks = Reflect::get(&js_sys::global(), &"navigator".into())
            .and_then(|n| Reflect::get(&n, &"locks".into()))
            .ok()
            .filter(|l| l.is_object())?;
        let request = Reflect::get(&locks, &"request".into())
            .ok()?
            .dyn_into::<Function>()
            .ok()?;
        let name = format!("gathering/{database}/{}", A::NAME);
        let channel = BroadcastChannel::new(&name).ok()?;
        let abort = AbortController::new().ok()?;
        let tab: Rc<str> = format!("{:x}", (js_sys::Math::random() * 2f64.powi(52)) as u64).into();
        let (settled, woken) = async_channel::unbounded();
        let tabs = Rc::new(Tabs {
            link: Link { channel, tab },
            role: Cell::new(Role::Follower),
            stopping: Cell::new(false),
            release: RefCell::new(None),
            abort,
            proxied: RefCell::default(),
            served: RefCell::default(),
            listing: RefCell::new(Array::new()),
            settled,
            handlers: RefCell::default(),
        });
        let on_message = {
            let tabs = tabs.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                tabs.on_message(&rt, &event.data());
            })
        };
        tabs.link
            .channel
            .set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        tabs.keep(on_message.into_js_value());

        // First: is the lock free right now?
        let (first_tx, first) = async_channel::bounded::<bool>(1);
        let first_grant = {
            let tabs = tabs.clone();
            Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |lock: JsValue| {
                let owns = !lock.is_null();
                let _ = first_tx.try_send(owns);
                if owns { tabs.own() } else { JsValue::UNDEFINED }
            })
        };
        let options = Object::new();
        set(&options, "ifAvailable", &true.into());
        let asked = request.call3(
            &locks,
            &name.as_str().into(),
            &options,
            first_grant.as_ref(),
        );
        tabs.keep(first_grant.into_js_value());
        if asked.is_err() {
            // The browser refused the request (a sandboxed frame, say).
            tabs.shutdown();
            return None;
        }
        if !first.recv().await.unwrap_or(false) {
            // Taken: follow its owner, and queue for the lock.
            let grant = {
                let tabs = tabs.clone();
                Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |_lock: JsValue| tabs.own())
            };
            let options = Object::new();
            set(&options, "signal", &tabs.abort.signal());
            if let Ok(waiting) =
                request.call3(&locks, &name.as_str().into(), &options, grant.as_ref())
                && let Ok(waiting) = waiting.dyn_into::<Promise>()
            {
                // Aborted at shutdown: that rejection is expected.
                let ignore = Closure::<dyn FnMut(JsValue)>::new(|_| {});
                let _ = waiting.catch(&ignore);
                tabs.keep(ignore.into_js_value());
            }
            tabs.keep(grant.into_js_value());
            tabs.link.post("hello", &[]);
            let woken = std::pin::pin!(woken.recv());
            if let Either::Right(_) = select(woken, Delay::new(HELLO_PATIENCE)).await {
                web_sys::console::warn_1(
                    &format!("gathering: {name} is locked by a tab that does not answer").into(),
                );
            }
        }
        Some(tabs)
    }

    /// This tab's role now.
    pub fn role(&self) -> Role {
        self.role.get()
    }

    /// Holds a handler the browser calls until shutdown.
    fn keep(&self, handler: JsValue) {
        self.handlers.borrow_mut().push(handler);
    }

    /// Takes the lock just granted: returns the promise that holds it until
    /// [`Tabs::shutdown`] (or resolves at once if stopping).
    fn own(&self) -> JsValue {
        if self.stopping.get() {
            return JsValue::UNDEFINED;
        }
        let mut resolve = None;
        let hold = Promise::new(&mut |ok, _| resolve = Some(ok));
        *self.release.borrow_mut() = resolve;
        let was = self.role.replace(Role::Owner);
        if was == Role::Follower {
            // What an owner that went away served is gone with it.
            self.close_proxied(CLOSE_OWNER_GONE, OWNER_GONE);
            self.link.post("owner", &[]);
        }
        let _ = self.settled.try_send(());
        hold.into()
    }

    /// A follower's new connection to gathering `id`, served by the owner.
    pub fn follow(&self, conn: ConnId, id: GatheringId, member: Option<&Member>) -> Rc<Peer> {
        // The owner acts with the member the join message names.
        let peer = Rc::new(Peer::new(
            conn,
            id.clone(),
            None,
            Upstream::Owner(self.link.clone()),
        ));
        let mut proxied = self.proxied.borrow_mut();
        proxied.retain(|_, p| !p.is_closed());
        proxied.insert(conn.0, peer.clone());
        drop(proxied);
        if !self.link.join(conn, &id, member) {
            peer.close(CLOSE_GOING_AWAY, "host shut down");
        }
        peer
    }

    /// The owner's latest listing, as a follower last heard it; asks for
    /// the next.
    pub fn listing(&self) -> Array {
        self.link.post("list", &[]);
        self.listing.borrow().clone()
    }

    fn close_proxied(&self, code: u16, reason: &str) {
        let proxied = std::mem::take(&mut *self.proxied.borrow_mut());
        for peer in proxied.values() {
            peer.close(code, reason);
        }
    }

    /// Before the hall shuts down: a follower closes its connections and
    /// stops waiting for the lock.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.abort.abort();
        self.close_proxied(CLOSE_GOING_AWAY, "host shut down");
    }

    /// After the hall shut down (an owner's served connections have had
    /// their goodbyes): releases the lock and leaves the channel.
    pub fn shutdown(&self) {
        if let Some(release) = self.release.borrow_mut().take() {
            let _ = release.call0(&JsValue::NULL);
        }
        self.link.channel.set_onmessage(None);
        self.link.channel.close();
        self.served.borrow_mut().clear();
        self.handlers.borrow_mut().clear();
    }

    fn on_message<A: App>(&self, rt: &Wasm<A>, msg: &JsValue) {
        let get = |name: &str| Reflect::get(msg, &name.into()).unwrap_or(JsValue::UNDEFINED);
        let (Some(t), Some(from)) = (get("t").as_string(), get("from").as_string()) else {
            return;
        };
        let to = get("to").as_string();
        if to.is_some() && to.as_deref() != Some(&*self.link.tab) {
            return;
        }
        let conn = get("conn").as_f64().map(|c| c as u64);
        match (self.role.get(), t.as_str()) {
            (Role::Owner, "hello") => {
                self.link.post("owner", &[("to", from.into())]);
            }
            (Role::Owner, "join") => {
                if let (Some(conn), Some(id)) = (conn, get("id").as_string()) {
                    self.serve(rt, from, conn, &id, &get("member"));
                }
            }
            (Role::Owner, "frame") => {
                let peer = conn.and_then(|c| self.served.borrow().get(&(from, c)).cloned());
                if let (Some(peer), Some(frame)) = (peer, data_frame(&get("data"))) {
                    if frame.len() > rt.0.max_frame_bytes {
                        peer.close(CLOSE_TOO_BIG, "frame too large");
                    } else if !peer.route(frame) {
                        peer.close(CLOSE_GOING_AWAY, "host shut down");
                    }
                }
            }
            (Role::Owner, "leave") => {
                let peer = conn.and_then(|c| self.served.borrow_mut().remove(&(from, c)));
                if let Some(peer) = peer {
                    peer.close(1000, "closed by the page");
                }
            }
            (Role::Owner, "list") => {
                self.link.post(
                    "listing",
                    &[("to", from.into()), ("list", crate::listing(rt).into())],
                );
            }
            (Role::Follower, "owner") => {
                // Sent to everyone, it is a takeover: the old owner is gone,
                // and so is what it served.
                if to.is_none() {
                    self.close_proxied(CLOSE_OWNER_GONE, OWNER_GONE);
                }
                let _ = self.settled.try_send(());
            }
            (Role::Follower, "out") => {
                let peer = conn.and_then(|c| self.proxied.borrow().get(&c).cloned());
                if let Some(peer) = peer {
                    peer.deliver_data(&get("data"));
                }
            }
            (Role::Follower, "close") => {
                let peer = conn.and_then(|c| self.proxied.borrow_mut().remove(&c));
                if let Some(peer) = peer {
                    let code = get("code").as_f64().map_or(1006, |c| c as u16);
                    peer.close(code, &get("reason").as_string().unwrap_or_default());
                }
            }
            (Role::Follower, "listing") => {
                if let Ok(list) = get("list").dyn_into::<Array>() {
                    *self.listing.borrow_mut() = list;
                }
            }
            _ => {}
        }
    }

    /// The owner joins connection `conn` of tab `from` to gathering `id`:
    /// a peer in this page whose messages and close go back to that tab.
    fn serve<A: App>(&self, rt: &Wasm<A>, from: String, conn: u64, id: &str, member: &JsValue) {
        let reply = |t: &'static str| {
            let link = self.link.clone();
            let to = JsValue::from(from.as_str());
            move |fields: &[(&str, JsValue)]| {
                let mut all = vec![("to", to.clone()), ("conn", JsValue::from(conn as f64))];
                all.extend(fields.iter().cloned());
                link.post(t, &all);
            }
        };
        // The follower checked both; a message that fails is not from it.
        let (Ok(id), Ok(member)) = (GatheringId::parse(id), crate::member::from_js(member)) else {
            reply("close")(&[("code", 1008.into()), ("reason", "bad join".into())]);
            return;
        };
        let local = rt.next_conn();
        let member = member.map(Arc::new);
        let peer = Rc::new(Peer::new(
            local,
            id.clone(),
            member.clone(),
            Upstream::Hall(rt.0.mailbox.clone()),
        ));
        let out = reply("out");
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let data = Reflect::get(&event, &"data".into()).unwrap_or(JsValue::UNDEFINED);
            out(&[("data", data)]);
        });
        let close = reply("close");
        let on_close = Closure::<dyn FnMut(u16, String)>::new(move |code: u16, reason: String| {
            close(&[("code", code.into()), ("reason", reason.into())]);
        });
        peer.set_onmessage(Some(on_message.into_js_value().unchecked_into()));
        peer.set_onclose(Some(on_close.into_js_value().unchecked_into()));
        let mut served = self.served.borrow_mut();
        served.retain(|_, p| !p.is_closed());
        served.insert((from, conn), peer.clone());
        drop(served);
        let join = Inbound::Join {
            conn: local,
            encoding: Encoding::Json,
            member,
        };
        let route = HallMail::Route(id, join, Some(PeerRef(peer.clone())));
        if rt.0.mailbox.try_send(route).is_err() {
            peer.close(CLOSE_GOING_AWAY, "host shut down");
        }
    }
}

fn set(target: &Object, name: &str, value: &JsValue) {
    let _ = Reflect::set(target, &name.into(), value);
}

fn conn_value(conn: ConnId) -> JsValue {
    // Connection ids count up from 1: far below 2^53.
    JsValue::from(conn.0 as f64)
}
