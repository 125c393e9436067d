//! The default RCU backend, on crossbeam-epoch.
//!
//! One [`crossbeam_epoch::Collector`] per domain (never the global default), so that every
//! domain has its own grace periods and a guard can be told apart from another domain's. Each
//! thread registers once per domain; its handle is cached in a thread-local list and pruned
//! when the domain is dropped.
//!
//! Each cached handle is stored with a clone of its collector, dropped *after* the handle. In
//! crossbeam-epoch 0.9.21, a handle whose drop releases the last reference to its collector
//! frees the collector's list of participants while still borrowing its own entry in it, which
//! Miri (Tree Borrows) reports as undefined behaviour; the extra clone makes sure the last
//! reference is never released from inside a handle's drop.

use super::{RcuCallback, RcuDomain};
use crate::bound::{OnItsThread, RcuBound};
use core::marker::PhantomData;
use core::panic::Location;
use crossbeam_epoch::{Collector, Guard, LocalHandle};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::vec::Vec;

/// Counters of an [`EpochRcu`] domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochStats {
    /// Callbacks queued with `call_rcu`.
    pub callbacks_queued: u64,
    /// Callbacks that have run.
    pub callbacks_run: u64,
    /// Completed `synchronize` / `rcu_barrier` calls (each waits for at least one grace period).
    pub grace_periods: u64,
}

/// An RCU domain on its own crossbeam-epoch collector.
///
/// Read sections are crossbeam pins (they nest); `call_rcu` defers a
/// closure into the collector and flushes it to the global queue at once, so that callbacks run
/// in the order they were queued and [`rcu_barrier`](RcuDomain::rcu_barrier) can wait for them.
pub struct EpochRcu {
    collector: Collector,
    alive: Arc<()>,
    id: u64,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    run: AtomicU64,
    grace_periods: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One open read section of an [`EpochRcu`] domain (its [`RcuDomain::ReadState`]): a pin of
/// the domain's collector, ended when dropped. `!Send` and `!Sync`: the section belongs to the
/// thread that opened it.
pub struct EpochSection {
    // INVARIANT: `OnItsThread`'s: this struct is `!Send`/`!Sync` through `_not_send`.
    _pin: OnItsThread<Guard>,
    domain: u64,
    _not_send: RcuBound,
}

impl Drop for EpochSection {
    fn drop(&mut self) {
        let domain = self.domain;
        let _ = SECTIONS.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if let Some(i) = s.iter().rposition(|(d, _)| *d == domain) {
                    s.remove(i);
                }
            }
        });
    }
}

impl core::fmt::Debug for EpochSection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochSection").finish_non_exhaustive()
    }
}

/// (domain id, liveness of the domain, the handle, a collector clone dropped after the handle).
type HandleCache = RefCell<Vec<(u64, Weak<()>, LocalHandle, Collector)>>;

std::thread_local! {
    static HANDLES: HandleCache = const { RefCell::new(Vec::new()) };
    /// The read sections open on this thread, innermost last: (domain id, where it was
    /// opened). The lock checker's view of RCU; a section leaked with `mem::forget` stays here.
    static SECTIONS: RefCell<Vec<(u64, &'static Location<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

impl EpochRcu {
    /// Creates a new, independent domain.
    pub fn new() -> Self {
        EpochRcu {
            collector: Collector::new(),
            alive: Arc::new(()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counters: Arc::new(Counters::default()),
        }
    }

    /// A number that identifies this domain for its whole life (for reports and debugging).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The domain's counters.
    pub fn stats(&self) -> EpochStats {
        EpochStats {
            callbacks_queued: self.counters.queued.load(Ordering::Relaxed),
            callbacks_run: self.counters.run.load(Ordering::Relaxed),
            grace_periods: self.counters.grace_periods.load(Ordering::Relaxed),
        }
    }

    /// Pins this domain's collector through the thread's cached handle.
    ///
    /// A pin may run deferred callbacks (crossbeam collects garbage on pins), and a callback
    /// may open a read section itself, of this domain or another: so the cache is only ever
    /// borrowed shared while pinning, registering happens with no pin inside the mutable
    /// borrow, and a cache that is busy or already torn down (thread exit) falls back to a
    /// one-off handle instead of panicking.
    fn pin(&self) -> Guard {
        let cached = || {
            HANDLES
                .try_with(|cache| {
                    let cache = cache.try_borrow().ok()?;
                    cache
                        .iter()
                        .find(|(id, _, _, _)| *id == self.id)
                        .map(|(_, _, h, _)| h.pin())
                })
                .ok()
                .flatten()
        };
        if let Some(g) = cached() {
            return g;
        }
        let registered = HANDLES
            .try_with(|cache| {
                let Ok(mut cache) = cache.try_borrow_mut() else {
                    return false;
                };
                cache.retain(|(_, alive, _, _)| alive.strong_count() > 0);
                cache.push((
                    self.id,
                    Arc::downgrade(&self.alive),
                    self.collector.register(),
                    self.collector.clone(),
                ));
                true
            })
            .unwrap_or(false);
        match cached().filter(|_| registered) {
            Some(g) => g,
            None => self.collector.register().pin(),
        }
    }

    /// Where the innermost read section of this domain open on the calling thread began, if
    /// one is open (including one leaked with `mem::forget`).
    pub fn section_open_here(&self) -> Option<&'static Location<'static>> {
        SECTIONS
            .try_with(|s| {
                s.try_borrow()
                    .ok()?
                    .iter()
                    .rev()
                    .find(|(d, _)| *d == self.id)
                    .map(|(_, at)| *at)
            })
            .ok()
            .flatten()
    }

    /// The lock checker's rule for a wait for a grace period: it would wait for the caller's
    /// own read section, forever.
    #[track_caller]
    fn check_not_in_section(&self, what: &str) {
        if let Some(at) = self.section_open_here() {
            crate::mmu::lockdep::count_grace_period_in_section();
            panic!(
                "lock checker: {what} inside an RCU read section of the same domain would wait \
                 for itself forever (rule I9: grace periods are waited for outside read \
                 sections); the section was opened at {at}, the wait is at {}",
                Location::caller()
            );
        }
    }

    /// [`rcu_barrier`](RcuDomain::rcu_barrier) that gives up after `timeout` (for example when
    /// a read section was leaked on another thread). Returns whether the barrier completed.
    pub fn rcu_barrier_timeout(&self, timeout: std::time::Duration) -> bool {
        let done = self.queue_marker();
        self.wait_for(&done, Some(std::time::Instant::now() + timeout))
    }

    fn queue_marker(&self) -> Arc<AtomicBool> {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let guard = self.pin();
        guard.defer(move || flag.store(true, Ordering::Release));
        guard.flush();
        done
    }

    fn wait_for(&self, done: &AtomicBool, until: Option<std::time::Instant>) -> bool {
        let mut spins = 0u32;
        while !done.load(Ordering::Acquire) {
            self.pin().flush();
            spins = spins.wrapping_add(1);
            if spins % 8 == 0 {
                if until.is_some_and(|u| std::time::Instant::now() >= u) {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
        self.counters.grace_periods.fetch_add(1, Ordering::Relaxed);
        true
    }
}

default_is_new!(EpochRcu);

impl core::fmt::Debug for EpochRcu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochRcu")
            .field("id", &self.id)
            .field("stats", &self.stats())
            .finish()
    }
}

// SAFETY: read sections are crossbeam pins of this domain's own collector. A closure deferred
// with `Guard::defer` runs only once the collector's global epoch has advanced twice past the
// epoch of the deferring pin, and the epoch cannot advance while any participant is pinned in
// an older epoch; so every pin alive at `call_rcu` time has ended first. Pins nest (crossbeam
// counts them per handle). `synchronize` and `rcu_barrier` wait for a marker callback queued
// behind everything before them; callbacks are flushed to the FIFO global queue at once and the
// queue is drained in order, so the marker runs last.
unsafe impl RcuDomain for EpochRcu {
    type ReadState = EpochSection;

    #[track_caller]
    fn read_lock_raw(&self) -> EpochSection {
        let at = Location::caller();
        let _ = SECTIONS.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.push((self.id, at));
            }
        });
        EpochSection {
            _pin: OnItsThread(self.pin()),
            domain: self.id,
            _not_send: PhantomData,
        }
    }

    fn call_rcu(&self, f: RcuCallback) {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let counters = self.counters.clone();
        let guard = self.pin();
        guard.defer(move || {
            f();
            counters.run.fetch_add(1, Ordering::Relaxed);
        });
        guard.flush();
    }

    /// # Panics
    /// Inside a read section of this domain on the calling thread (the lock checker's report:
    /// the wait could never end).
    #[track_caller]
    fn synchronize(&self) {
        self.check_not_in_section("synchronize_rcu");
        let done = self.queue_marker();
        self.wait_for(&done, None);
    }

    /// # Panics
    /// As [`synchronize`](Self::synchronize).
    #[track_caller]
    fn rcu_barrier(&self) {
        self.check_not_in_section("rcu_barrier");
        let done = self.queue_marker();
        self.wait_for(&done, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn callback_waits_for_reader_on_other_thread() {
        let rcu = Arc::new(EpochRcu::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (tx2, rx2) = std::sync::mpsc::channel::<()>();
        let r2 = rcu.clone();
        let reader = std::thread::spawn(move || {
            let _g = r2.read_lock();
            tx.send(()).unwrap();
            rx2.recv().unwrap();
        });
        rx.recv().unwrap();
        let c = ran.clone();
        rcu.call_rcu(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        for _ in 0..200 {
            drop(rcu.read_lock());
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "callback ran inside a reader's section"
        );
        tx2.send(()).unwrap();
        reader.join().unwrap();
        rcu.rcu_barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let s = rcu.stats();
        assert_eq!(s.callbacks_queued, 1);
        assert_eq!(s.callbacks_run, 1);
        assert!(s.grace_periods >= 1);
    }

    #[test]
    fn domains_are_independent() {
        let a = EpochRcu::new();
        let b = EpochRcu::new();
        assert_ne!(a.id(), b.id());
        let _ga = a.read_lock();
        let ran = Arc::new(AtomicBool::new(false));
        let f = ran.clone();
        b.call_rcu(Box::new(move || f.store(true, Ordering::Release)));
        // A section of `a` does not hold off `b`'s grace periods.
        b.rcu_barrier();
        assert!(ran.load(Ordering::Acquire));
    }
}
