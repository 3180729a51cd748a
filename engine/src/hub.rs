//! Where events meet the scheduling core, on whichever thread brings them.
//!
//! Events come from nng's callback threads (requests, closed connections),
//! the store writer (durability), the provider thread (block states) and the
//! daemon's timer and signal loop. Handing each one to a dedicated loop
//! thread would cost a thread wake-up per message, which on a small login
//! node is most of a synchronous request's latency. Instead the hub uses a
//! combining lock: an event is put in the inbox, and whichever thread gets
//! the core lock handles every event in the inbox (its own and any posted
//! meanwhile) and carries out the resulting actions. A thread that finds the
//! lock taken just leaves its event for the holder. Events are handled one
//! at a time, in arrival order, and nobody ever waits on the core lock, so a
//! callback that fires while its own thread holds the lock cannot deadlock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::clock::now_us;
use crate::core::{Action, Core, Event};

/// Carries out the core's actions (the daemon's sockets, store writer and
/// provider thread; a recorder in tests).
pub trait ActionRunner {
    /// Performs and clears `actions`; returns true once one of them was
    /// [`Action::Exit`].
    fn execute(&mut self, actions: &mut Vec<Action>) -> bool;
}

/// The core and what executes its actions, installed in a [`Hub`].
#[derive(Debug)]
pub struct Driver<X> {
    /// The scheduling state machine.
    pub core: Core,
    /// Its hands.
    pub io: X,
    out: Vec<Action>,
}

impl<X: ActionRunner> Driver<X> {
    /// A driver; `core.start` actions are carried out at once.
    pub fn new(mut core: Core, mut io: X) -> (Self, bool) {
        let mut out = Vec::new();
        core.start(now_us(), &mut out);
        let exit = io.execute(&mut out);
        (Driver { core, io, out }, exit)
    }

    /// Handles one event now and carries out its actions.
    pub fn handle(&mut self, event: Event) -> bool {
        self.core.handle(event, now_us(), &mut self.out);
        self.io.execute(&mut self.out)
    }
}

/// The inbox and the core lock. See the module documentation.
#[derive(Debug)]
pub struct Hub<X> {
    inbox: Mutex<VecDeque<Event>>,
    driver: Mutex<Option<Driver<X>>>,
    exited: tokio::sync::Notify,
    /// When the core next wants a tick (µs since the epoch; `u64::MAX`: no
    /// special wish), and a nudge for the timer loop when it moves earlier.
    wake_at: AtomicU64,
    rearm: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<X: ActionRunner> Default for Hub<X> {
    fn default() -> Self {
        Hub {
            inbox: Mutex::new(VecDeque::new()),
            driver: Mutex::new(None),
            exited: tokio::sync::Notify::new(),
            wake_at: AtomicU64::new(u64::MAX),
            rearm: tokio::sync::Notify::new(),
        }
    }
}

impl<X: ActionRunner> Hub<X> {
    /// Installs the driver; events posted before now are handled at once.
    pub fn install(&self, driver: Driver<X>) {
        *lock(&self.driver) = Some(driver);
        self.drain();
    }

    /// Removes the driver (for the final shutdown steps); later events stay
    /// in the inbox unhandled.
    pub fn take(&self) -> Option<Driver<X>> {
        lock(&self.driver).take()
    }

    /// Resolves once the core has asked to exit.
    pub async fn exited(&self) {
        self.exited.notified().await;
    }

    /// When the core next wants a tick (µs since the epoch), if it said.
    pub fn wake_at(&self) -> Option<u64> {
        match self.wake_at.load(Ordering::Acquire) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// Resolves when the core's wake-up time moved earlier.
    pub async fn rearmed(&self) {
        self.rearm.notified().await;
    }

    /// Runs `f` on the core (a metrics scrape), waiting for the core lock,
    /// then handles what was posted meanwhile; none before the driver is
    /// installed. Never call it from a thread that may hold the core lock
    /// (an action), nor where waiting a moment is unwelcome: events never
    /// wait, this does.
    pub fn inspect<R>(&self, f: impl FnOnce(&Core) -> R) -> Option<R> {
        let read = lock(&self.driver).as_ref().map(|d| f(&d.core));
        // Events posted while we held the lock were left for its holder.
        self.drain();
        read
    }

    /// Delivers `event`: handled now on this thread, or by the thread that
    /// holds the core.
    pub fn post(&self, event: Event) {
        lock(&self.inbox).push_back(event);
        self.drain();
    }

    fn drain(&self) {
        loop {
            let mut guard = match self.driver.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let Some(driver) = guard.as_mut() else {
                return;
            };
            loop {
                let next = lock(&self.inbox).pop_front();
                let Some(event) = next else { break };
                if driver.handle(event) {
                    self.exited.notify_one();
                }
            }
            let wish = driver.core.next_deadline(now_us()).unwrap_or(u64::MAX);
            if self.wake_at.swap(wish, Ordering::AcqRel) > wish {
                self.rearm.notify_one();
            }
            drop(guard);
            // An event posted after our last look, by a thread that found
            // the lock taken, is still ours to handle.
            if lock(&self.inbox).is_empty() {
                return;
            }
        }
    }
}
