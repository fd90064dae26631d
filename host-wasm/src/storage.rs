//! Where in-page gatherings live between spawns: IndexedDB, or memory.
//!
//! The same idea as the server's `Store` trait, made async for the browser:
//! load one gathering's latest snapshot, write one durably. A snapshot is
//! stored as one postcard-encoded `(seq, state)` value keyed by
//! `{app}/{gathering id}` (ids hold no `/`), so two apps in one database
//! never read each other's, and a sequence number survives exactly (a JS
//! number would not past 2^53).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use async_channel::Sender;
use gathering_core::GatheringId;
pub use gathering_driver::Stored;
use js_sys::{Function, Object, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbFactory, IdbObjectStore, IdbOpenDbRequest, IdbRequest};

/// The object store that holds one record per gathering.
const STORE: &str = "gatherings";
/// Schema version of the database.
const VERSION: u32 = 1;

/// A storage failure, saying what was being done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageError(pub String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

/// Storage for the in-page host.
///
/// Contract: when [`Storage::save`] returns `Ok`, a later [`Storage::load`] of
/// that id returns that snapshot, even from a new page after a reload.
#[derive(Clone, Debug)]
pub enum Storage {
    /// IndexedDB: survives a page reload.
    IndexedDb(IndexedDb),
    /// A map in memory: gone with the page (for pages that must not persist).
    Memory(Rc<RefCell<BTreeMap<String, Stored>>>),
}

/// The record key of gathering `id` of application `app`.
fn key(app: &str, id: &GatheringId) -> String {
    format!("{app}/{id}")
}

impl Storage {
    /// The latest snapshot of `id` of application `app`, or `None` if it
    /// was never saved.
    pub async fn load(&self, app: &str, id: &GatheringId) -> Result<Option<Stored>, StorageError> {
        match self {
            Storage::IndexedDb(db) => db.load(&key(app, id)).await,
            Storage::Memory(map) => Ok(map.borrow().get(&key(app, id)).cloned()),
        }
    }

    /// Writes the snapshot of `id` of application `app` durably.
    pub async fn save(
        &self,
        app: &str,
        id: &GatheringId,
        stored: &Stored,
    ) -> Result<(), StorageError> {
        match self {
            Storage::IndexedDb(db) => db.save(&key(app, id), stored).await,
            Storage::Memory(map) => {
                map.borrow_mut().insert(key(app, id), stored.clone());
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
    pub async fn open(name: &str) -> Result<Self, StorageError> {
        let factory: IdbFactory = Reflect::get(&js_sys::global(), &"indexedDB".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| {
                StorageError(
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
                if let Ok(db) = request.result().and_then(|r| r.dyn_into::<IdbDatabase>())
                    && !db.object_store_names().contains(STORE)
                {
                    let _ = db.create_object_store(STORE);
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

    async fn load(&self, key: &str) -> Result<Option<Stored>, StorageError> {
        let doing = || format!("loading gathering {key} from IndexedDB");
        let store = self.store("readonly").map_err(|e| js_error(&doing(), &e))?;
        let request = store
            .get(&JsValue::from_str(key))
            .map_err(|e| js_error(&doing(), &e))?;
        let value = finished(&request)
            .await
            .map_err(|e| js_error(&doing(), &e))?;
        if value.is_undefined() {
            return Ok(None);
        }
        let bytes = value
            .dyn_into::<Uint8Array>()
            .map_err(|_| StorageError(format!("{}: the record is not bytes", doing())))?
            .to_vec();
        let (seq, snapshot): (u64, Vec<u8>) = postcard::from_bytes(&bytes)
            .map_err(|e| StorageError(format!("{}: the record is unreadable: {e}", doing())))?;
        Ok(Some(Stored { seq, snapshot }))
    }

    async fn save(&self, key: &str, stored: &Stored) -> Result<(), StorageError> {
        let doing = || format!("saving gathering {key} to IndexedDB");
        let bytes = postcard::to_allocvec(&(stored.seq, &stored.snapshot))
            .map_err(|e| StorageError(format!("{}: {e}", doing())))?;
        let store = self
            .store("readwrite")
            .map_err(|e| js_error(&doing(), &e))?;
        let value = Uint8Array::from(bytes.as_slice());
        let request = store
            .put_with_key(&value, &JsValue::from_str(key))
            .map_err(|e| js_error(&doing(), &e))?;
        // The write is durable when its transaction completes, not when the
        // request succeeds.
        committed(&request)
            .await
            .map_err(|e| js_error(&doing(), &e))
    }

    /// The object store in a new transaction of `mode`. Writes ask for
    /// `durability: "strict"` (flushed to disk before `complete`), which
    /// web-sys only offers behind an unstable flag, hence the direct call.
    fn store(&self, mode: &str) -> Result<IdbObjectStore, JsValue> {
        let transaction: Function = Reflect::get(&self.db, &"transaction".into())?.dyn_into()?;
        let options = Object::new();
        Reflect::set(&options, &"durability".into(), &"strict".into())?;
        let tx: web_sys::IdbTransaction = transaction
            .call3(&self.db, &STORE.into(), &mode.into(), &options)?
            .dyn_into()?;
        tx.object_store(STORE)
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

/// Waits for the transaction of `request` to complete (or to fail).
async fn committed(request: &IdbRequest) -> Result<(), JsValue> {
    let Some(tx) = request.transaction() else {
        return finished(request).await.map(drop);
    };
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

fn js_error(doing: &str, e: &JsValue) -> StorageError {
    let what = e
        .dyn_ref::<web_sys::DomException>()
        .map(|d| format!("{}: {}", d.name(), d.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    StorageError(format!("{doing}: {what}"))
}
