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
//! On the channel, tabs speak [`TabMsg`] (see [`crate::link`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_timer::Delay;
use futures_util::future::{Either, select};
use gathering_core::protocol::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_RESTART, CLOSE_TOO_BIG,
};
use gathering_core::{
    App, ConnId, Encoding, Frame, GatheringId, Inbound, Member, SessionId, SessionJoin,
};
use gathering_driver::HallMail;
use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{AbortController, BroadcastChannel, MessageEvent};

use crate::link::{Data, Envelope, Link, TabMsg};
use crate::listing::{Listed, listed, to_array};
use crate::peer::{Peer, PeerRef, Upstream, data_frame};
use crate::runtime::Wasm;

/// The reason of the close ([`CLOSE_RESTART`]) of the connections an owner
/// tab served when it goes away: join again, and the new owner serves.
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
    listing: RefCell<Vec<Listed>>,
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
            link: Link::new(channel, tab),
            role: Cell::new(Role::Follower),
            stopping: Cell::new(false),
            release: RefCell::new(None),
            abort,
            proxied: RefCell::default(),
            served: RefCell::default(),
            listing: RefCell::default(),
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
            .channel()
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
            tabs.link.post(None, TabMsg::Hello);
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
            self.close_proxied(CLOSE_RESTART, OWNER_GONE);
            self.link.post(None, TabMsg::Owner);
        }
        let _ = self.settled.try_send(());
        hold.into()
    }

    /// A follower's new connection to gathering `id`, served by the owner.
    pub fn follow(
        &self,
        conn: ConnId,
        id: GatheringId,
        member: Option<&Member>,
        session: Option<&SessionJoin>,
    ) -> Rc<Peer> {
        // The owner acts with the member and session the join names.
        let peer = Rc::new(Peer::new(
            conn,
            id.clone(),
            None,
            None,
            Upstream::Owner(self.link.clone()),
        ));
        let mut proxied = self.proxied.borrow_mut();
        proxied.retain(|_, p| !p.is_closed());
        proxied.insert(conn.0, peer.clone());
        drop(proxied);
        if !self.link.join(conn, &id, member, session) {
            peer.close(CLOSE_GOING_AWAY, "host shut down");
        }
        peer
    }

    /// The owner's latest listing, as a follower last heard it; asks for
    /// the next.
    pub fn listing(&self) -> Array {
        self.link.post(None, TabMsg::List);
        to_array(&self.listing.borrow())
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
        self.link.channel().set_onmessage(None);
        self.link.channel().close();
        self.served.borrow_mut().clear();
        self.handlers.borrow_mut().clear();
    }

    fn on_message<A: App>(&self, rt: &Wasm<A>, data: &JsValue) {
        let Some(Envelope { from, to, msg }) = Envelope::from_js(data) else {
            return;
        };
        if to.as_deref().is_some_and(|to| to != self.link.tab()) {
            return;
        }
        match (self.role.get(), msg) {
            (Role::Owner, TabMsg::Hello) => {
                self.link.post(Some(&from), TabMsg::Owner);
            }
            (
                Role::Owner,
                TabMsg::Join {
                    conn,
                    id,
                    member,
                    session,
                },
            ) => {
                self.serve(rt, from, conn, &id, member, session);
            }
            (Role::Owner, TabMsg::Frame { conn, data }) => {
                let peer = self.served.borrow().get(&(from, conn)).cloned();
                if let Some(peer) = peer {
                    let frame = Frame::from(data);
                    if frame.len() > rt.0.max_frame_bytes {
                        peer.close(CLOSE_TOO_BIG, "frame too large");
                    } else if !peer.route(frame) {
                        peer.close(CLOSE_GOING_AWAY, "host shut down");
                    }
                }
            }
            (Role::Owner, TabMsg::Leave { conn }) => {
                let peer = self.served.borrow_mut().remove(&(from, conn));
                if let Some(peer) = peer {
                    peer.close(CLOSE_NORMAL, "closed by the page");
                }
            }
            (Role::Owner, TabMsg::List) => {
                self.link.post(Some(&from), TabMsg::Listing(listed(rt)));
            }
            (Role::Follower, TabMsg::Owner) => {
                // Sent to everyone, it is a takeover: the old owner is gone,
                // and so is what it served.
                if to.is_none() {
                    self.close_proxied(CLOSE_RESTART, OWNER_GONE);
                }
                let _ = self.settled.try_send(());
            }
            (Role::Follower, TabMsg::Out { conn, data }) => {
                let peer = self.proxied.borrow().get(&conn).cloned();
                if let Some(peer) = peer {
                    peer.deliver(&Frame::from(data));
                }
            }
            (Role::Follower, TabMsg::Close { conn, code, reason }) => {
                let peer = self.proxied.borrow_mut().remove(&conn);
                if let Some(peer) = peer {
                    peer.close(code, &reason);
                }
            }
            (Role::Follower, TabMsg::Listing(list)) => {
                *self.listing.borrow_mut() = list;
            }
            _ => {}
        }
    }

    /// The owner joins connection `conn` of tab `from` to gathering `id`:
    /// a peer in this page whose messages and close go back to that tab.
    fn serve<A: App>(
        &self,
        rt: &Wasm<A>,
        from: String,
        conn: u64,
        id: &str,
        member: Option<Member>,
        session: Option<(String, Option<u64>, Option<u64>)>,
    ) {
        let link = self.link.clone();
        let to: Rc<str> = from.as_str().into();
        // The follower parsed them; a message that fails is not from it.
        let session = match session.map(|(s, since, epoch)| {
            SessionId::parse(&s).map(|session| SessionJoin {
                session,
                since,
                epoch,
            })
        }) {
            None => Ok(None),
            Some(Ok(join)) => Ok(Some(join)),
            Some(Err(_)) => Err(()),
        };
        let (Ok(id), Ok(session)) = (GatheringId::parse(id), session) else {
            let reason = "bad join".to_owned();
            link.post(
                Some(&to),
                TabMsg::Close {
                    conn,
                    code: CLOSE_POLICY,
                    reason,
                },
            );
            return;
        };
        let local = rt.next_conn();
        let member = member.map(Arc::new);
        let peer = Rc::new(Peer::new(
            local,
            id.clone(),
            member.clone(),
            session.as_ref().map(|s| s.session.clone()),
            Upstream::Hall(rt.0.mailbox.clone()),
        ));
        let on_message = {
            let (link, to) = (link.clone(), to.clone());
            Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
                let data = Reflect::get(&event, &"data".into()).unwrap_or(JsValue::UNDEFINED);
                if let Some(frame) = data_frame(&data) {
                    let data = Data::from(&frame);
                    link.post(Some(&to), TabMsg::Out { conn, data });
                }
            })
        };
        let on_close = Closure::<dyn FnMut(u16, String)>::new(move |code: u16, reason: String| {
            link.post(Some(&to), TabMsg::Close { conn, code, reason });
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
            session: session.map(Box::new),
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
