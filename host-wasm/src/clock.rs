//! The page's clock, mapped onto the core's [`Instant`].

use gathering_core::Instant;
use js_sys::Reflect;
use wasm_bindgen::JsCast;
use web_sys::Performance;

/// `performance.now()` as core instants: nanoseconds since the page (or
/// worker) started. Monotonic, unlike `Date.now()`, so a clock change on the
/// organiser's laptop cannot disperse a gathering early.
#[derive(Clone, Debug)]
pub struct Clock {
    performance: Performance,
}

impl Clock {
    /// The clock of the current global (window or worker), if it has one.
    pub fn new() -> Option<Self> {
        let performance = Reflect::get(&js_sys::global(), &"performance".into())
            .ok()?
            .dyn_into::<Performance>()
            .ok()?;
        Some(Clock { performance })
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        from_millis_f64(self.performance.now())
    }
}

/// A millisecond count as JS gives it (fractional, maybe negative or NaN)
/// as an instant; out-of-range values saturate.
pub fn from_millis_f64(ms: f64) -> Instant {
    // `as` saturates on overflow and maps NaN to 0: nothing here can panic.
    Instant::from_nanos((ms * 1e6) as u64)
}

/// An instant as fractional milliseconds, for JS.
pub fn to_millis_f64(at: Instant) -> f64 {
    at.as_nanos() as f64 / 1e6
}
