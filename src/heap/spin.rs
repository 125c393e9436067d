//! Spinlocks of the heap backend: the split PMD and PTE locks, the RCU callback queue and the
//! mm walk lock.
//!
//! # The model
//!
//! A lock is one atomic word. Taking it is a compare-and-swap with **Acquire** ordering,
//! releasing it a store with **Release** ordering: everything the previous holder did before
//! its release happens before everything the next holder does after its acquire. That is the
//! whole guarantee a page-table lock gives (the PTE lock's `pmd_same` recheck relies on it), so
//! the locks here are as small as possible:
//!
//! - [`RawSpinLock`]: test-and-test-and-set on an `AtomicBool`, with `lock`/`try_lock` and an
//!   `unsafe` `unlock`, for the PMD and PTE locks whose lock and unlock are separate calls of
//!   [`PgtableBackend`](crate::provenance::PgtableBackend).
//! - [`SpinLock<T>`]: a [`RawSpinLock`] that owns its data and unlocks in a guard's `Drop`.
//! - [`RwSpinLock`]: a reader-writer spinlock (the mm's walk lock: shared for walks, exclusive
//!   for removers that work by exclusivity).
//!
//! Waiting spins on a plain load (so the cache line is shared while the lock is held) and
//! calls [`yield_now`] between tries: on the project's 2-core machine,
//! and under Miri, the holder may need the waiter's CPU to make progress. None of the locks is
//! fair or reentrant; taking a lock its own thread holds deadlocks, as a kernel spinlock does.
//!
//! Everything goes through [`crate::sync`], so loom could model these locks.

use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, yield_now};
use core::fmt;
use core::ops::{Deref, DerefMut};

/// A test-and-test-and-set spinlock without data (`spinlock_t`).
///
/// An all-zero `RawSpinLock` is a valid unlocked lock, so one can live in memory from
/// `alloc_zeroed`.
#[derive(Default, Debug)]
#[repr(transparent)]
pub struct RawSpinLock {
    locked: AtomicBool,
}

impl RawSpinLock {
    /// An unlocked lock (what `Default` gives too).
    pub const fn new() -> Self {
        RawSpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning until it is free (`spin_lock`).
    #[inline]
    pub fn lock(&self) {
        while !self.try_lock() {
            while self.locked.load(Ordering::Relaxed) {
                yield_now();
            }
        }
    }

    /// Takes the lock if it is free (`spin_trylock`).
    #[inline]
    pub fn try_lock(&self) -> bool {
        // Acquire: the previous holder's critical section happens before ours.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock (`spin_unlock`).
    ///
    /// # Safety
    /// The caller holds the lock (took it and has not released it since).
    #[inline]
    pub unsafe fn unlock(&self) {
        // Release: our critical section happens before the next holder's.
        self.locked.store(false, Ordering::Release);
    }

    /// Whether some thread holds the lock now (a racy snapshot, for assertions).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A spinlock that owns the data it protects.
///
/// # Invariants
/// `data` is accessed only by the holder of `lock`, through a [`SpinGuard`].
pub struct SpinLock<T> {
    lock: RawSpinLock,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands `data` to one thread at a time (type invariant), and its
// Acquire/Release orders the accesses of successive holders; moving a `T` between threads this
// way needs `T: Send`, nothing more (like `std::sync::Mutex`).
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock holding `data`.
    pub const fn new(data: T) -> Self {
        SpinLock {
            lock: RawSpinLock::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock; the guard releases it when dropped.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.lock.lock();
        // INVARIANT: the lock is held until the guard drops.
        SpinGuard { lock: self }
    }

    /// Runs `f` on the data with the lock held.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }
}

impl<T> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

/// A held [`SpinLock`].
///
/// # Invariants
/// This thread holds `lock.lock` until the guard drops.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock (type invariant), so no other access to the data
        // overlaps this shared borrow, which lives no longer than the guard.
        self.lock.data.with(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow through the guard.
        self.lock.data.with_mut(|p| unsafe { &mut *p })
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock (type invariant) and gives it up here, once.
        unsafe { self.lock.lock.unlock() }
    }
}

/// The writer bit of a [`RwSpinLock`]'s state; the other bits count readers.
const WRITER: usize = 1 << (usize::BITS - 1);

/// A reader-writer spinlock (the `mmap_lock` of the heap backend). Readers share it; a writer
/// excludes readers and other writers. Writers do not starve readers out and readers do not
/// wait for a queued writer: the simplest lock that gives the exclusion.
#[derive(Default, Debug)]
pub struct RwSpinLock {
    /// [`WRITER`] if a writer holds the lock, else the number of readers.
    state: AtomicUsize,
}

impl RwSpinLock {
    /// An unlocked lock (what `Default` gives too).
    pub const fn new() -> Self {
        RwSpinLock {
            state: AtomicUsize::new(0),
        }
    }

    /// Takes the lock shared.
    pub fn read(&self) {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            yield_now();
        }
    }

    /// Releases a shared hold.
    ///
    /// # Safety
    /// The caller holds the lock shared.
    pub unsafe fn read_unlock(&self) {
        self.state.fetch_sub(1, Ordering::Release);
    }

    /// Takes the lock exclusively.
    pub fn write(&self) {
        while self
            .state
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            yield_now();
        }
    }

    /// Releases an exclusive hold.
    ///
    /// # Safety
    /// The caller holds the lock exclusively.
    pub unsafe fn write_unlock(&self) {
        self.state.store(0, Ordering::Release);
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[test]
    fn raw_lock_excludes_and_trylock_fails_while_held() {
        let l = RawSpinLock::new();
        l.lock();
        assert!(l.is_locked() && !l.try_lock());
        // SAFETY: taken just above.
        unsafe { l.unlock() };
        assert!(l.try_lock());
        // SAFETY: taken by the `try_lock` above.
        unsafe { l.unlock() };
    }

    #[test]
    fn spinlock_counts_without_losing_increments() {
        let l = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || {
                    for _ in 0..200 {
                        *l.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.with(|n| *n), 400);
    }

    #[test]
    fn rwlock_shares_readers_and_excludes_the_writer() {
        let l = RwSpinLock::new();
        l.read();
        l.read();
        assert_eq!(l.state.load(Ordering::Relaxed), 2);
        // SAFETY: two shared holds taken above.
        unsafe {
            l.read_unlock();
            l.read_unlock();
        }
        l.write();
        assert_eq!(l.state.load(Ordering::Relaxed), WRITER);
        // SAFETY: held exclusively since the line above.
        unsafe { l.write_unlock() };
        assert!(std::format!("{l:?}").contains("state: 0"));
    }
}
