//! The in-page runtime of the shared driver: the page's event loop,
//! futures-timer, in-page peers, IndexedDB, and the hall in a cell.

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_timer::Delay;
use futures_util::FutureExt;
use gathering_core::{App, Commit, Config, Deadline, GatheringId, Instant};
use gathering_driver::{
    Durable, GatheringLoop, HallMail, HallState, Loading, Observed, Runtime, Status,
};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::clock::{Clock, to_millis_f64};
use crate::peer::PeerRef;
use crate::storage::Storage;

/// Longest single timer wait. `setTimeout` fires at once for delays beyond
/// 2^31 - 1 ms (about 24.8 days); a timer capped at one day merely fires
/// early, which the driver's contract allows: the tick changes nothing and
/// the timer is re-armed.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// State shared by the hall's task, the gathering tasks and the JS handles
/// of one host. Single-threaded (the page's event loop), hence `Rc` and
/// cells.
pub(crate) struct Shared<A: App> {
    /// The page's clock.
    pub clock: Clock,
    /// Tunables given to every gathering.
    pub config: std::sync::Arc<Config>,
    /// Frames larger than this close their connection with 1009.
    pub max_frame_bytes: usize,
    /// Where gatherings are loaded from and persisted to.
    pub storage: Storage,
    /// The hall's task's mailbox.
    pub mailbox: async_channel::Sender<HallMail<PeerRef>>,
    /// The hall.
    pub hall: RefCell<HallState<Wasm<A>>>,
    /// What `host.gatherings()` shows, by id (sorted: stable output).
    pub registry: RefCell<BTreeMap<GatheringId, Arc<Status>>>,
    /// The page's `onDispersed(event)` handler, if it gave one.
    pub on_dispersed: Option<Function>,
    /// The next connection id, for this page's connections and those it
    /// serves for other tabs.
    pub next_conn: std::cell::Cell<u64>,
}

/// The in-page host as the driver sees it: a handle to [`Shared`].
pub(crate) struct Wasm<A: App>(pub Rc<Shared<A>>);

impl<A: App> Clone for Wasm<A> {
    fn clone(&self) -> Self {
        Wasm(self.0.clone())
    }
}

/// One gathering's browser timer, armed at one instant at a time.
#[derive(Default)]
pub(crate) struct Timer(Option<(Instant, Delay)>);

impl<A: App> Runtime for Wasm<A> {
    type App = A;
    type Conn = PeerRef;
    type Timer = Timer;
    type HallGuard<'a> = RefMut<'a, HallState<Self>>;

    fn now(&self) -> Instant {
        self.0.clock.now()
    }

    fn poll_timer(&self, timer: &mut Timer, deadline: Deadline, cx: &mut Context<'_>) -> Poll<()> {
        if timer.0.as_ref().is_none_or(|(at, _)| *at != deadline.at) {
            let wait = deadline.at.saturating_since(self.now());
            timer.0 = Some((deadline.at, Delay::new(whole_millis(wait).min(MAX_WAIT))));
        }
        match timer.0.as_mut() {
            Some((_, delay)) => {
                let fired = delay.poll_unpin(cx);
                if fired.is_ready() {
                    timer.0 = None;
                }
                fired
            }
            None => Poll::Pending,
        }
    }

    fn config(&self) -> &std::sync::Arc<Config> {
        &self.0.config
    }

    fn hall(&self) -> RefMut<'_, HallState<Self>> {
        self.0.hall.borrow_mut()
    }

    fn load(&self, loading: Loading<Self>) {
        let storage = self.0.storage.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let loaded = storage
                .load(A::NAME, loading.id())
                .await
                .map_err(|e| e.to_string());
            loading.finish(loaded);
        });
    }

    fn persist(&self, id: &GatheringId, commit: Commit, durable: Durable<PeerRef>) {
        let storage = self.0.storage.clone();
        let id = id.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let saved = storage.save(A::NAME, &id, commit).await;
            durable.report(saved.map_err(|e| e.to_string()));
        });
    }

    fn spawn(&self, task: GatheringLoop<Self>) {
        wasm_bindgen_futures::spawn_local(task.run());
    }

    /// Wall-clock microseconds, with a random sub-millisecond part: the
    /// page's clock counts whole milliseconds, and two tabs may create
    /// gatherings in the same one.
    fn fresh_epoch(&self) -> u64 {
        let micros = js_sys::Date::now() * 1000.0 + (js_sys::Math::random() * 1000.0).floor();
        // A float of at most 2^53: exact, and cast without loss.
        micros as u64
    }

    fn observe(&self, what: Observed<'_>) {
        match what {
            Observed::Spawned { id, status, .. } => {
                self.0
                    .registry
                    .borrow_mut()
                    .insert(id.clone(), status.clone());
            }
            Observed::SpawnFailed { id, error } => web_sys::console::error_1(
                &format!("gathering {id} could not be loaded: {error}").into(),
            ),
            Observed::PersistFailed { id, error } => web_sys::console::warn_1(
                &format!("gathering {id}: snapshot not written ({error}); will retry").into(),
            ),
            Observed::Dispersed {
                id, reason, late, ..
            } => {
                self.0.registry.borrow_mut().remove(id);
                if let Some(handler) = &self.0.on_dispersed {
                    let event = Object::new();
                    let _ = Reflect::set(&event, &"id".into(), &id.as_str().into());
                    let _ = Reflect::set(&event, &"reason".into(), &reason.as_str().into());
                    let late_ms = late.as_secs_f64() * 1e3;
                    let _ = Reflect::set(&event, &"lateMs".into(), &late_ms.into());
                    if let Err(e) = handler.call1(&JsValue::NULL, &event) {
                        web_sys::console::error_2(&"gathering: onDispersed threw".into(), &e);
                    }
                }
            }
            Observed::Unavailable { id } => web_sys::console::error_1(
                &format!("gathering {id}: no mailbox while live; connection closed").into(),
            ),
            Observed::DisperseRequested { .. }
            | Observed::ShuttingDown { .. }
            | Observed::Refused { .. } => {}
        }
    }
}

impl<A: App> Wasm<A> {
    /// A connection id not used before in this host.
    pub fn next_conn(&self) -> gathering_core::ConnId {
        let next = &self.0.next_conn;
        gathering_core::ConnId(next.replace(next.get().wrapping_add(1)))
    }

    /// The page clock in milliseconds.
    pub fn now_ms(&self) -> f64 {
        to_millis_f64(self.0.clock.now())
    }
}

/// `wait` rounded up to whole milliseconds: browser timers count whole
/// milliseconds and truncate, and a timer that fires before the deadline
/// only costs another round.
fn whole_millis(wait: Duration) -> Duration {
    let ms = wait.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
