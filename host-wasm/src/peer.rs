//! The in-page end of a connection: what a gathering writes to.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gathering_core::protocol::CLOSE_NORMAL;
use gathering_core::{ConnId, Delivery, Frame, GatheringId, Inbound, SessionId, SharedMember};
use gathering_driver::{Conn, HallMail};
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::JsValue;

use crate::link::Link;

/// Where a connection's frames and its close go: this page's hall, or the
/// tab that owns the database (see [`crate::tabs`] and [`crate::link`]).
#[derive(Debug)]
pub enum Upstream {
    /// The hall's mailbox in this page.
    Hall(async_channel::Sender<HallMail<PeerRef>>),
    /// The owner tab, over the database's channel.
    Owner(Link),
}

/// One in-page connection, shared by the JS [`crate::Connection`] handle and
/// the gathering serving it.
///
/// Contract, as for a WebSocket: `onmessage` receives `{data}` (a string for
/// JSON, a `Uint8Array` for postcard) for every frame while open; `onclose`
/// is called exactly once, with `(code, reason)`, whoever closes first; after
/// that nothing more is delivered.
#[derive(Debug)]
pub struct Peer {
    /// The connection's id in the hall.
    pub conn: ConnId,
    /// The gathering it joined.
    pub gathering: GatheringId,
    /// Who it is (`None`: a member of its own, with every right).
    pub member: Option<SharedMember>,
    /// The session it joined with.
    pub session: Option<SessionId>,
    /// Who hears of the connection's frames and its close.
    upstream: Upstream,
    onmessage: RefCell<Option<Function>>,
    onclose: RefCell<Option<Function>>,
    closed: Cell<bool>,
}

impl Peer {
    /// A new, open connection to `gathering`, whose frames and close go
    /// `upstream`.
    pub fn new(
        conn: ConnId,
        gathering: GatheringId,
        member: Option<SharedMember>,
        session: Option<SessionId>,
        upstream: Upstream,
    ) -> Self {
        Peer {
            conn,
            gathering,
            member,
            session,
            upstream,
            onmessage: RefCell::new(None),
            onclose: RefCell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Whether either side has closed it.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Sets or clears the message handler.
    pub fn set_onmessage(&self, f: Option<Function>) {
        *self.onmessage.borrow_mut() = f;
    }

    /// The message handler.
    pub fn onmessage(&self) -> Option<Function> {
        self.onmessage.borrow().clone()
    }

    /// Sets or clears the close handler.
    pub fn set_onclose(&self, f: Option<Function>) {
        *self.onclose.borrow_mut() = f;
    }

    /// The close handler.
    pub fn onclose(&self) -> Option<Function> {
        self.onclose.borrow().clone()
    }

    /// Delivers `frame` to the page, unless closed. A handler that throws
    /// is the page's bug, not the gathering's: the exception is logged.
    pub fn deliver(&self, frame: &Frame) {
        if !self.closed.get() {
            self.deliver_data(&frame_data(frame));
        }
    }

    /// Delivers `data` (a string or a `Uint8Array`) to the page, unless
    /// closed.
    pub fn deliver_data(&self, data: &JsValue) {
        if self.closed.get() {
            return;
        }
        // Cloned out of the cell first: the handler may set a new handler.
        let Some(handler) = self.onmessage() else {
            return;
        };
        let event = Object::new();
        if Reflect::set(&event, &"data".into(), data).is_ok()
            && let Err(e) = handler.call1(&JsValue::NULL, &event)
        {
            web_sys::console::error_2(&"gathering: onmessage threw".into(), &e);
        }
    }

    /// Marks the connection closed, tells the page and, as when a socket
    /// closes, the hall; once. Returns whether this call closed it.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        if self.closed.replace(true) {
            return false;
        }
        match &self.upstream {
            Upstream::Hall(hall) => {
                // The page closed it itself: a clean leave.
                let clean = code == CLOSE_NORMAL;
                let leave = Inbound::Leave {
                    conn: self.conn,
                    clean,
                };
                // A host that shut down has nobody left to tell.
                let _ = hall.try_send(HallMail::Route(self.gathering.clone(), leave, None));
            }
            Upstream::Owner(link) => link.leave(self.conn),
        }
        if let Some(handler) = self.onclose()
            && let Err(e) = handler.call2(&JsValue::NULL, &code.into(), &reason.into())
        {
            web_sys::console::error_2(&"gathering: onclose threw".into(), &e);
        }
        true
    }

    /// Sends `frame` from the page to its gathering. Returns `false` if
    /// the host has shut down.
    pub fn route(&self, frame: Frame) -> bool {
        match &self.upstream {
            Upstream::Hall(hall) => {
                let inbound = Inbound::Frame {
                    conn: self.conn,
                    frame,
                    member: self.member.clone(),
                    session: self.session.clone(),
                };
                let route = HallMail::Route(self.gathering.clone(), inbound, None);
                hall.try_send(route).is_ok()
            }
            Upstream::Owner(link) => link.frame(self.conn, &frame),
        }
    }
}

/// A frame as a page sees it: a string for JSON, a `Uint8Array` for postcard.
pub fn frame_data(frame: &Frame) -> JsValue {
    match frame {
        Frame::Text(text) => JsValue::from_str(text),
        Frame::Binary(bytes) => Uint8Array::from(&bytes[..]).into(),
    }
}

/// A frame from what a page sent: a string or a `Uint8Array`.
pub fn data_frame(data: &JsValue) -> Option<Frame> {
    use wasm_bindgen::JsCast;
    if let Some(text) = data.as_string() {
        Some(Frame::Text(text.into()))
    } else {
        data.dyn_ref::<Uint8Array>()
            .map(|bytes| Frame::Binary(bytes.to_vec().into()))
    }
}

/// A gathering's handle on an in-page connection.
#[derive(Clone, Debug)]
pub struct PeerRef(pub Rc<Peer>);

impl Conn for PeerRef {
    /// No socket buffer in a page: a frame reaches its handler at once, so
    /// both deliveries are the same call.
    fn send(&self, frame: Frame, _delivery: Delivery) -> bool {
        self.0.deliver(&frame);
        !self.0.is_closed()
    }

    fn close(&self, code: u16, reason: &'static str) {
        self.0.close(code, reason);
    }
}
