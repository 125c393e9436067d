//! The test-and-set spinlock of the test backends and the loom models: an Acquire
//! compare-and-swap to take it, a Release store to release it, `yield_now` between tries.
//!
//! Written against `typed_pgtable::sync`, so under `--cfg loom` loom sees every access and
//! knows a spinning thread cannot progress until the holder runs. Files include it with
//! `#[path = "common/spin.rs"] mod spin;` (the loom models do not build `tests/common/mod.rs`).

use typed_pgtable::sync::{AtomicBool, Ordering, yield_now};

/// A test-and-set spinlock without data (`spinlock_t`), the split PMD or PTE lock of a test
/// backend.
#[derive(Default)]
pub struct SpinLock {
    locked: AtomicBool,
}

#[allow(dead_code, reason = "not every including file takes every path")]
impl SpinLock {
    /// An unlocked lock.
    pub fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning until it is free (`spin_lock`).
    pub fn lock(&self) {
        while !self.try_lock() {
            yield_now();
        }
    }

    /// Takes the lock if it is free (`spin_trylock`), without waiting.
    pub fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock (`spin_unlock`); the caller holds it.
    pub fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Whether some thread holds the lock now (a snapshot, for a backend's assertions).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}
