//! The live gatherings of a page's hall, as `Host::gatherings()` lists
//! them, and as an owner tab sends them to its followers.

use js_sys::{Array, Object, Reflect};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use gathering_core::App;

use crate::runtime::Wasm;

/// One live gathering, as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// Connections joined.
    pub connections: u32,
    /// Ops applied.
    pub seq: u64,
    /// Milliseconds since its last client activity.
    pub idle_ms: f64,
    /// Milliseconds left before its idle dispersal, if nothing happens.
    pub disperses_in_ms: f64,
}

/// The live gatherings of the hall in this page, sorted by id.
pub fn listed<A: App>(rt: &Wasm<A>) -> Vec<Listed> {
    let shared = &rt.0;
    let now = shared.clock.now();
    let ms = |d: gathering_core::Duration| d.as_secs_f64() * 1e3;
    shared
        .registry
        .borrow()
        .iter()
        .map(|(id, status)| {
            let deadline = status.idle_deadline(shared.config.idle_timeout);
            Listed {
                id: id.as_str().to_owned(),
                connections: status.connections(),
                seq: status.seq(),
                idle_ms: ms(now.saturating_since(status.last_activity())),
                disperses_in_ms: ms(deadline.saturating_since(now)),
            }
        })
        .collect()
}

/// `list` as a page sees it: `[{id, connections, seq, idleMs, dispersesInMs}]`.
pub fn to_array(list: &[Listed]) -> Array {
    let array = Array::new();
    for entry in list {
        let object = Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = Reflect::set(&object, &k.into(), &v);
        };
        set("id", entry.id.as_str().into());
        set("connections", entry.connections.into());
        // Op counts stay far below 2^53.
        set("seq", (entry.seq as f64).into());
        set("idleMs", entry.idle_ms.into());
        set("dispersesInMs", entry.disperses_in_ms.into());
        array.push(&object);
    }
    array
}
