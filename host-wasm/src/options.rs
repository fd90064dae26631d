//! The options object of a host's `open` (`TournamentHost.open`, ...), read and checked.

use std::time::Duration;

use gathering_core::Config;
use gathering_core::protocol::DEFAULT_MAX_FRAME_BYTES;
use js_sys::{Function, Reflect};
use wasm_bindgen::{JsCast, JsValue};

/// Default IndexedDB database name.
pub const DEFAULT_DATABASE: &str = "gathering";

/// Host options, as `open({...})` takes them (every field optional):
/// `idleTimeoutMs` (default 24 h), `emptyGraceMs` (default off),
/// `retryIntervalMs` (default 1000), `maxFrameBytes` (default 1 MiB),
/// `snapshotOps` (ops logged between two snapshots, default 1024),
/// `database` (IndexedDB name, default `"gathering"`; `null` keeps
/// gatherings in memory only) and `onDispersed` (called with `{id, reason,
/// lateMs}` after each dispersal; `lateMs` is how long after its deadline an
/// idle or empty one was decided).
#[derive(Clone, Debug)]
pub struct Options {
    /// Core tunables.
    pub config: Config,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// IndexedDB database, or `None` for memory.
    pub database: Option<String>,
    /// Called after each dispersal.
    pub on_dispersed: Option<Function>,
}

impl Options {
    /// Reads `value` (undefined or an object); a message naming the bad
    /// field otherwise.
    pub fn from_js(value: &JsValue) -> Result<Self, String> {
        let mut options = Options {
            config: Config::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            database: Some(DEFAULT_DATABASE.to_owned()),
            on_dispersed: None,
        };
        if value.is_undefined() || value.is_null() {
            return Ok(options);
        }
        if !value.is_object() {
            return Err("open takes an options object, e.g. {idleTimeoutMs: 60000}".into());
        }
        if let Some(d) = millis(value, "idleTimeoutMs")? {
            options.config.idle_timeout = d;
        }
        options.config.empty_grace = millis(value, "emptyGraceMs")?;
        if let Some(d) = millis(value, "retryIntervalMs")? {
            options.config.retry_interval = d;
            // As on the server: backoff doubles up to 30 intervals.
            options.config.max_retry_interval = d.saturating_mul(30);
        }
        if let Some(n) = number(value, "maxFrameBytes")? {
            if !(64.0..=64.0 * 1024.0 * 1024.0).contains(&n) {
                return Err(format!(
                    "maxFrameBytes must be between 64 and 67108864, got {n}"
                ));
            }
            options.max_frame_bytes = n as usize;
        }
        if let Some(n) = number(value, "snapshotOps")? {
            if !(1.0..=f64::from(u32::MAX)).contains(&n) {
                return Err(format!(
                    "snapshotOps must be between 1 and 4294967295, got {n}"
                ));
            }
            options.config.snapshot_ops = n as u32;
        }
        let database = field(value, "database")?;
        if database.is_null() {
            options.database = None;
        } else if let Some(name) = database.as_string() {
            if name.is_empty() {
                return Err("database must be a non-empty name, or null for memory only".into());
            }
            options.database = Some(name);
        } else if !database.is_undefined() {
            return Err("database must be a string, or null for memory only".into());
        }
        let on_dispersed = field(value, "onDispersed")?;
        if !(on_dispersed.is_undefined() || on_dispersed.is_null()) {
            options.on_dispersed = Some(
                on_dispersed
                    .dyn_into::<Function>()
                    .map_err(|_| "onDispersed must be a function".to_owned())?,
            );
        }
        Ok(options)
    }
}

fn field(value: &JsValue, name: &str) -> Result<JsValue, String> {
    Reflect::get(value, &name.into()).map_err(|_| format!("option {name} cannot be read"))
}

/// Option `name` of `value`: `None` when absent, an error unless a finite
/// number.
pub(crate) fn number(value: &JsValue, name: &str) -> Result<Option<f64>, String> {
    let v = field(value, name)?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n.is_finite() => Ok(Some(n)),
        _ => Err(format!("{name} must be a number, got {v:?}")),
    }
}

fn millis(value: &JsValue, name: &str) -> Result<Option<Duration>, String> {
    match number(value, name)? {
        None => Ok(None),
        Some(ms) if ms > 0.0 => Ok(Some(Duration::from_nanos((ms * 1e6) as u64))),
        Some(ms) => Err(format!(
            "{name} must be a positive number of milliseconds, got {ms}"
        )),
    }
}
