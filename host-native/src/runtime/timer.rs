//! Wake-ups at a gathering's deadline, to a fraction of a millisecond.
//!
//! tokio's timer counts whole milliseconds: a deadline is rounded up to the
//! next millisecond tick and the driver's park timeout is rounded up again,
//! so a tokio timer fires about 1 ms late on average and up to 2 ms late at
//! the tail. Dispersal is promised at the deadline, so gathering tasks are
//! woken by this one thread instead: it sleeps on a condition variable until
//! the earliest armed deadline (the kernel's high-resolution timer) and wakes
//! the tasks that are due. Deadlines that fall within [`GAP`] of the last
//! round of wake-ups are served together, so that tens of thousands falling
//! due per second cost at most 10,000 wake-ups of this thread, not one each.
//!
//! The tasks are woken straight from this thread (into the runtime's shared
//! queue). An earlier version handed them to a dispatcher task inside the
//! runtime, to save cross-thread wake-ups; under bursts its own wake-up
//! queued behind the thousands of tasks it had just woken, and deadlines
//! waited for it by tens of milliseconds.
//!
//! A gathering arms at most one entry at a time and re-arms only when its
//! deadline fired or moved earlier, as with any timer; an entry that is no
//! longer wanted (the gathering moved on or is gone) just causes one
//! harmless wake-up when it falls due.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Shortest time between two rounds of wake-ups: deadlines that fall within
/// it are served together, adding at most this much to their lateness
/// (50 us cost a third more CPU per dispersal at a million; 200 us doubled
/// the p99 of 10,000 falling due in a second; see BENCHMARKS.md).
pub const GAP: std::time::Duration = std::time::Duration::from_micros(100);

/// The wake-up thread of one server. Dropping it stops the thread.
pub struct Timers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Earliest first; the sequence number only breaks ties. An ordered map
    /// rather than a binary heap: a million armed entries make a 40 MB heap
    /// whose every pop sifts through twenty levels of it, a cache miss each,
    /// under the lock; the map pops from its leftmost leaf and takes new
    /// (mostly later) deadlines near its right edge, both in cache.
    due: BTreeMap<(Instant, u64), Waker>,
    next: u64,
    stopped: bool,
}

/// One task's timer: armed at one instant at a time.
#[derive(Debug, Default)]
pub struct Timer {
    /// The instant an entry was registered for, if any.
    registered: Option<Instant>,
}

impl Timers {
    /// Starts the wake-up thread.
    pub fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("gathering-timers".into())
            .spawn(move || thread.run())?;
        Ok(Timers { inner })
    }

    /// Ready once `at` has passed; until then, makes sure the task of `cx`
    /// is woken at `at` (registering once per instant armed).
    pub fn poll(&self, timer: &mut Timer, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= at {
            timer.registered = None;
            return Poll::Ready(());
        }
        if timer.registered != Some(at) {
            timer.registered = Some(at);
            let mut state = self.inner.lock();
            let earliest = state
                .due
                .first_key_value()
                .is_none_or(|(&(first, _), _)| at < first);
            let seq = state.next;
            state.next += 1;
            state.due.insert((at, seq), cx.waker().clone());
            drop(state);
            if earliest {
                self.inner.changed.notify_one();
            }
        }
        Poll::Pending
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.inner.lock().stopped = true;
        self.inner.changed.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere (every change
        // is one push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread: sleeps until the earliest instant (and at least `GAP`
    /// after the last round), then wakes every task that is due.
    fn run(&self) {
        let mut state = self.lock();
        // When the last round of wake-ups began.
        let mut last: Option<Instant> = None;
        let mut due = Vec::new();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let open = last.map(|t| t + GAP);
            if open.is_none_or(|open| now >= open) {
                while let Some(entry) = state.due.first_entry()
                    && entry.key().0 <= now
                {
                    due.push(entry.remove());
                }
                if !due.is_empty() {
                    last = Some(now);
                    // Woken outside the lock, so that tasks arming meanwhile
                    // do not wait for the whole round.
                    drop(state);
                    for waker in due.drain(..) {
                        waker.wake();
                    }
                    state = self.lock();
                    continue;
                }
            }
            let next = state
                .due
                .first_key_value()
                .map(|(&(at, _), _)| open.map_or(at, |open| open.max(at)));
            state = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(state, wait)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0)
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_each_task_at_its_instant_never_before() {
        let timers = Arc::new(Timers::start().unwrap());
        let start = Instant::now();
        // Armed out of order, from tasks waiting side by side.
        let waits = [40u64, 10, 30, 20, 10].map(|ms| {
            let timers = timers.clone();
            let at = start + Duration::from_millis(ms);
            tokio::spawn(async move {
                let mut timer = Timer::default();
                std::future::poll_fn(|cx| timers.poll(&mut timer, at, cx)).await;
                (at, Instant::now())
            })
        });
        for wait in waits {
            let (at, fired) = wait.await.unwrap();
            assert!(fired >= at, "woken {:?} early", at - fired);
            // Generous: a loaded machine may be slow, never early.
            assert!(fired - at < Duration::from_secs(5));
        }
    }
}
