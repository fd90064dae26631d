//! Where in-page gatherings live between spawns: IndexedDB, or memory.
//!
//! The same shape as the server's store, made async for the browser: a
//! gathering's latest snapshot and the log of ops after it; a commit
//! appends log entries, or writes a snapshot and deletes the entries it
//! covers, in one transaction. A snapshot is one postcard-encoded
//! `(seq, state)` value in the `gatherings` object store, keyed
//! `{app}/{gathering id}` (ids hold no `/`), so two apps in one database
//! never read each other's. The log entries of one commit are one record
//! in the `log` store (one put per commit, however many ops it holds: a
//! put per entry cost a third of the page's durable ops/s), a postcard list
//! of `(seq, entry)`, keyed `{app}/{id}/{first seq as 16 hex digits}`, so
//! that keys sort by seq and a sequence number survives exactly (a JS
//! number would not past 2^53). A record never straddles a snapshot: a
//! snapshot's seq is the last of a commit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use async_channel::Sender;
use gathering_core::{Commit, GatheringId, Loaded, LogEntry, Snapshot};
pub use gathering_driver::StoreError;
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbFactory, IdbKeyRange, IdbOpenDbRequest, IdbRequest, IdbTransaction};

/// The object store of snapshots, one record per gathering.
const STORE: &str = "gatherings";
/// The object store of log entries.
const LOG: &str = "log";
/// Schema version of the database (2 added the log).
const VERSION: u32 = 2;

/// Storage for the in-page host.
///
/// Contract: when [`Storage::save`] returns `Ok`, a later [`Storage::load`] of
/// that id returns that snapshot, even from a new page after a reload.
#[derive(Clone, Debug)]
pub enum Storage {
    /// IndexedDB: survives a page reload.
    IndexedDb(IndexedDb),
    /// A map in memory: gone with the page (for pages that must not persist).
    Memory(Rc<RefCell<BTreeMap<String, Loaded>>>),
}

/// The record key of gathering `id` of application `app`.
fn key(app: &str, id: &GatheringId) -> String {
    format!("{app}/{id}")
}

impl Storage {
    /// The latest snapshot of `id` of application `app`, or `None` if it
    /// was never saved.
    pub async fn load(&self, app: &str, id: &GatheringId) -> Result<Loaded, StoreError> {
        match self {
            Storage::IndexedDb(db) => db.load(&key(app, id)).await,
            Storage::Memory(map) => {
                Ok(map.borrow().get(&key(app, id)).cloned().unwrap_or_default())
            }
        }
    }

    /// Writes `commit` of gathering `id` of application `app` durably.
    pub async fn save(
        &self,
        app: &str,
        id: &GatheringId,
        commit: Commit,
    ) -> Result<(), StoreError> {
        match self {
            Storage::IndexedDb(db) => db.save(&key(app, id), &commit).await,
            Storage::Memory(map) => {
                map.borrow_mut()
                    .entry(key(app, id))
                    .or_default()
                    .apply(commit);
                Ok(())
            }
        }
    }

    /// Releases the database connection, so that it can be deleted or
    /// upgraded by another page.
    pub fn close(&self) {
        if let Storage::IndexedDb(db) = self {
            db.db.close();
        }
    }
}

/// An open IndexedDB database with the `gatherings` object store.
#[derive(Clone, Debug)]
pub struct IndexedDb {
    db: IdbDatabase,
}

impl IndexedDb {
    /// Opens (creating if needed) the database `name`.
    pub async fn open(name: &str) -> Result<Self, StoreError> {
        let factory: IdbFactory = Reflect::get(&js_sys::global(), &"indexedDB".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| {
                StoreError(
                    "IndexedDB is not available here; open the host with {database: null} \
                     for one that keeps gatherings in memory only"
                        .into(),
                )
            })?;
        let request: IdbOpenDbRequest = factory
            .open_with_u32(name, VERSION)
            .map_err(|e| js_error(&format!("opening IndexedDB database {name:?}"), &e))?;
        // The schema is created inside the upgrade event, synchronously.
        let upgrade = Closure::<dyn FnMut(JsValue)>::new({
            let request = request.clone();
            move |_event: JsValue| {
                if let Ok(db) = request.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
                    for name in [STORE, LOG] {
                        if !db.object_store_names().contains(name) {
                            let _ = db.create_object_store(name);
                        }
                    }
                }
            }
        });
        request.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let result = finished(&request).await;
        request.set_onupgradeneeded(None);
        let db = result
            .and_then(|r| r.dyn_into::<IdbDatabase>())
            .map_err(|e| js_error(&format!("opening IndexedDB database {name:?}"), &e))?;
        Ok(IndexedDb { db })
    }

    async fn load(&self, key: &str) -> Result<Loaded, StoreError> {
        let doing = || format!("loading gathering {key} from IndexedDB");
        let fail = |e: JsValue| js_error(&doing(), &e);
        let tx = self.transaction("readonly").map_err(fail)?;
        let request = tx
            .object_store(STORE)
            .and_then(|store| store.get(&JsValue::from_str(key)))
            .map_err(fail)?;
        let value = finished(&request).await.map_err(fail)?;
        let snapshot = if value.is_undefined() {
            None
        } else {
            let (seq, bytes) =
                record(&value).map_err(|e| StoreError(format!("{}: {e}", doing())))?;
            Some(Snapshot { seq, bytes })
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let range = entries(key, after.saturating_add(1), u64::MAX).map_err(fail)?;
        let request = tx
            .object_store(LOG)
            .and_then(|log| log.get_all_with_key(&range))
            .map_err(fail)?;
        let values = finished(&request).await.map_err(fail)?;
        let mut log = Vec::new();
        for value in js_sys::Array::from(&values).iter() {
            let entries =
                entries_of(&value).map_err(|e| StoreError(format!("{}: {e}", doing())))?;
            log.extend(
                entries
                    .into_iter()
                    .map(|(seq, bytes)| LogEntry { seq, bytes }),
            );
        }
        Ok(Loaded { snapshot, log })
    }

    async fn save(&self, key: &str, commit: &Commit) -> Result<(), StoreError> {
        let doing = || format!("saving gathering {key} to IndexedDB");
        let fail = |e: JsValue| js_error(&doing(), &e);
        let tx = self.transaction("readwrite").map_err(fail)?;
        match &commit.snapshot {
            Some(bytes) => {
                let value = bytes_of(commit.seq, bytes)
                    .map_err(|e| StoreError(format!("{}: {e}", doing())))?;
                tx.object_store(STORE)
                    .and_then(|store| store.put_with_key(&value, &JsValue::from_str(key)))
                    .map_err(fail)?;
                // The entries the snapshot covers go in the same transaction.
                let covered = entries(key, 0, commit.seq).map_err(fail)?;
                tx.object_store(LOG)
                    .and_then(|log| log.delete(&covered))
                    .map_err(fail)?;
            }
            None => {
                let Some(first) = commit.log.first() else {
                    return Ok(());
                };
                let entries: Vec<(u64, &[u8])> = commit
                    .log
                    .iter()
                    .map(|e| (e.seq, e.bytes.as_slice()))
                    .collect();
                let encoded = postcard::to_allocvec(&entries)
                    .map_err(|e| StoreError(format!("{}: {e}", doing())))?;
                let value = Uint8Array::from(encoded.as_slice());
                let key = JsValue::from_str(&entry_key(key, first.seq));
                tx.object_store(LOG)
                    .and_then(|log| log.put_with_key(&value, &key))
                    .map_err(fail)?;
            }
        }
        // The write is durable when its transaction completes, not when its
        // requests succeed.
        committed(&tx).await.map_err(fail)
    }

    /// A new transaction of `mode` over both object stores. Writes ask for
    /// `durability: "strict"` (flushed to disk before `complete`), which
    /// web-sys only offers behind an unstable flag, hence the direct call.
    fn transaction(&self, mode: &str) -> Result<IdbTransaction, JsValue> {
        let transaction: Function = Reflect::get(&self.db, &"transaction".into())?.dyn_into()?;
        let options = Object::new();
        Reflect::set(&options, &"durability".into(), &"strict".into())?;
        let stores = js_sys::Array::of2(&STORE.into(), &LOG.into());
        transaction
            .call3(&self.db, &stores, &mode.into(), &options)?
            .dyn_into()
    }
}

/// Waits for `request` to succeed or fail; its result or its error.
async fn finished(request: &IdbRequest) -> Result<JsValue, JsValue> {
    let (tx, rx) = async_channel::bounded::<()>(1);
    let done = signal(&tx);
    request.set_onsuccess(Some(done.as_ref().unchecked_ref()));
    request.set_onerror(Some(done.as_ref().unchecked_ref()));
    let _ = rx.recv().await;
    request.set_onsuccess(None);
    request.set_onerror(None);
    match request.error() {
        Ok(None) => request.result(),
        Ok(Some(e)) => Err(e.into()),
        Err(e) => Err(e),
    }
}

/// The key of log entry `seq` of the gathering keyed `key`.
fn entry_key(key: &str, seq: u64) -> String {
    format!("{key}/{seq:016x}")
}

/// The keys of log entries `from..=to` of the gathering keyed `key`.
fn entries(key: &str, from: u64, to: u64) -> Result<IdbKeyRange, JsValue> {
    IdbKeyRange::bound(
        &JsValue::from_str(&entry_key(key, from)),
        &JsValue::from_str(&entry_key(key, to)),
    )
}

/// A `(seq, bytes)` record as stored.
fn bytes_of(seq: u64, bytes: &[u8]) -> Result<Uint8Array, postcard::Error> {
    let encoded = postcard::to_allocvec(&(seq, bytes))?;
    Ok(Uint8Array::from(encoded.as_slice()))
}

/// Reads a log record: the `(seq, entry)` list of one commit.
fn entries_of(value: &JsValue) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let bytes = value
        .dyn_ref::<Uint8Array>()
        .ok_or("the record is not bytes")?
        .to_vec();
    postcard::from_bytes(&bytes).map_err(|e| format!("the record is unreadable: {e}"))
}

/// Reads a `(seq, bytes)` record.
fn record(value: &JsValue) -> Result<(u64, Vec<u8>), String> {
    let bytes = value
        .dyn_ref::<Uint8Array>()
        .ok_or("the record is not bytes")?
        .to_vec();
    postcard::from_bytes(&bytes).map_err(|e| format!("the record is unreadable: {e}"))
}

/// Waits for `tx` to complete (or to fail).
async fn committed(tx: &IdbTransaction) -> Result<(), JsValue> {
    let (sender, rx) = async_channel::bounded::<()>(1);
    let done = signal(&sender);
    tx.set_oncomplete(Some(done.as_ref().unchecked_ref()));
    tx.set_onerror(Some(done.as_ref().unchecked_ref()));
    tx.set_onabort(Some(done.as_ref().unchecked_ref()));
    let _ = rx.recv().await;
    tx.set_oncomplete(None);
    tx.set_onerror(None);
    tx.set_onabort(None);
    match tx.error() {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// A JS event handler that wakes whoever waits on `tx`.
fn signal(tx: &Sender<()>) -> Closure<dyn FnMut(JsValue)> {
    let tx = tx.clone();
    Closure::new(move |_event: JsValue| {
        let _ = tx.try_send(());
    })
}

fn js_error(doing: &str, e: &JsValue) -> StoreError {
    let what = e
        .dyn_ref::<web_sys::DomException>()
        .map(|d| format!("{}: {}", d.name(), d.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    StoreError(format!("{doing}: {what}"))
}
