//! The in-page end of a connection: what a gathering writes to.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gathering_core::{ConnId, Delivery, Frame, GatheringId, Inbound};
use gathering_driver::{Conn, HallMail};
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::JsValue;

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
    /// The hall's mailbox, which hears of the connection's close.
    hall: async_channel::Sender<HallMail<PeerRef>>,
    onmessage: RefCell<Option<Function>>,
    onclose: RefCell<Option<Function>>,
    closed: Cell<bool>,
}

impl Peer {
    /// A new, open connection to `gathering`, whose close is routed to `hall`.
    pub fn new(
        conn: ConnId,
        gathering: GatheringId,
        hall: async_channel::Sender<HallMail<PeerRef>>,
    ) -> Self {
        Peer {
            conn,
            gathering,
            hall,
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
        if self.closed.get() {
            return;
        }
        // Cloned out of the cell first: the handler may set a new handler.
        let Some(handler) = self.onmessage() else {
            return;
        };
        let data: JsValue = match frame {
            Frame::Text(text) => JsValue::from_str(text),
            Frame::Binary(bytes) => Uint8Array::from(&bytes[..]).into(),
        };
        let event = Object::new();
        if Reflect::set(&event, &"data".into(), &data).is_ok()
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
        let leave = Inbound::Leave { conn: self.conn };
        // A host that shut down has nobody left to tell.
        let _ = self
            .hall
            .try_send(HallMail::Route(self.gathering.clone(), leave, None));
        if let Some(handler) = self.onclose()
            && let Err(e) = handler.call2(&JsValue::NULL, &code.into(), &reason.into())
        {
            web_sys::console::error_2(&"gathering: onclose threw".into(), &e);
        }
        true
    }

    /// Sends a frame from the page to its gathering, through the hall.
    /// Returns `false` if the host has shut down.
    pub fn route(&self, inbound: Inbound) -> bool {
        let route = HallMail::Route(self.gathering.clone(), inbound, None);
        self.hall.try_send(route).is_ok()
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
