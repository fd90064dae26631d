//! Wake-ups at a gathering's deadline, to tens of microseconds.
//!
//! tokio's timer counts whole milliseconds: a deadline is rounded up to the
//! next millisecond tick and the driver's park timeout is rounded up again,
//! so a tokio timer fires about 1 ms late on average and up to 2 ms late at
//! the tail. Dispersal is promised at the deadline, so gathering tasks are
//! woken through this one thread instead: it sleeps on a condition variable
//! until the earliest armed deadline (the kernel's high-resolution timer)
//! and hands the due tasks' wakers to a dispatcher task, which wakes them
//! from inside the runtime. Waking each task from this thread would cost a
//! cross-thread wake-up (a lock and often a futex) per task; through the
//! dispatcher, that is paid once per batch, which matters when tens of
//! thousands fall due per second.
//!
//! A gathering arms at most one entry at a time and re-arms only when its
//! deadline fired or moved earlier, as with any timer; an entry that is no
//! longer wanted (the gathering moved on or is gone) just causes one
//! harmless wake-up when it falls due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

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
    /// Earliest first; the sequence number only breaks ties.
    due: BinaryHeap<Reverse<Entry>>,
    next: u64,
    /// Wakers whose instant has come, for the dispatcher.
    fired: Vec<Waker>,
    /// The dispatcher, while it waits for `fired`.
    dispatcher: Option<Waker>,
    stopped: bool,
}

struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One task's timer: armed at one instant at a time.
#[derive(Debug, Default)]
pub struct Timer {
    /// The instant an entry was registered for, if any.
    registered: Option<Instant>,
}

impl Timers {
    /// Starts the wake-up thread and its dispatcher task (on the current
    /// tokio runtime).
    pub fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("gathering-timers".into())
            .spawn(move || thread.run())?;
        tokio::spawn(inner.clone().dispatch());
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
            let earliest = state.due.peek().is_none_or(|Reverse(e)| at < e.at);
            let seq = state.next;
            state.next += 1;
            state.due.push(Reverse(Entry {
                at,
                seq,
                waker: cx.waker().clone(),
            }));
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
        let dispatcher = {
            let mut state = self.inner.lock();
            state.stopped = true;
            state.dispatcher.take()
        };
        self.inner.changed.notify_one();
        if let Some(dispatcher) = dispatcher {
            dispatcher.wake();
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere (every change
        // is one push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread: sleeps until the earliest instant, moves what is due to
    /// `fired` and wakes the dispatcher.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let mut fired = false;
            while state.due.peek().is_some_and(|Reverse(e)| e.at <= now) {
                if let Some(Reverse(entry)) = state.due.pop() {
                    state.fired.push(entry.waker);
                    fired = true;
                }
            }
            if fired && let Some(dispatcher) = state.dispatcher.take() {
                // Woken outside the lock.
                drop(state);
                dispatcher.wake();
                state = self.lock();
                continue;
            }
            state = match state.due.peek().map(|Reverse(e)| e.at) {
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

impl Inner {
    /// The dispatcher task: wakes the tasks whose instant has come, from a
    /// runtime worker, until the timers are dropped.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let fired = std::future::poll_fn(|cx| {
                let mut state = self.lock();
                if state.stopped {
                    return Poll::Ready(None);
                }
                if state.fired.is_empty() {
                    state.dispatcher = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Some(std::mem::take(&mut state.fired)))
            })
            .await;
            let Some(fired) = fired else { return };
            for waker in fired {
                waker.wake();
            }
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
