//! The in-page end of a connection: what a gathering writes to.

use std::cell::{Cell, RefCell};

use gathering_core::{ConnId, Frame, GatheringId};
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
    onmessage: RefCell<Option<Function>>,
    onclose: RefCell<Option<Function>>,
    closed: Cell<bool>,
}

impl Peer {
    /// A new, open connection.
    pub fn new(conn: ConnId, gathering: GatheringId) -> Self {
        Peer {
            conn,
            gathering,
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

    /// Marks the connection closed and tells the page, once. Returns whether
    /// this call closed it.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        if self.closed.replace(true) {
            return false;
        }
        if let Some(handler) = self.onclose()
            && let Err(e) = handler.call2(&JsValue::NULL, &code.into(), &reason.into())
        {
            web_sys::console::error_2(&"gathering: onclose threw".into(), &e);
        }
        true
    }
}
