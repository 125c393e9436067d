//! Synchronization primitives that switch to [loom](https://docs.rs/loom)'s under `--cfg loom`.
//!
//! Code written against this shim (today [`rcu::tiny`](crate::rcu::tiny), the models in
//! `tests/loom.rs` and the backend of `tests/loom_crate.rs`) compiles unchanged in both worlds:
//!
//! - with `RUSTFLAGS="--cfg loom"` every item is loom's, so loom sees each atomic access,
//!   fence, yield and `UnsafeCell` access and can explore their interleavings;
//! - otherwise the atomics are `core`'s, and [`UnsafeCell`] is a thin wrapper over
//!   [`core::cell::UnsafeCell`] with loom's closure API ([`with`](UnsafeCell::with),
//!   [`with_mut`](UnsafeCell::with_mut)), so nothing here needs `std`.
//!
//! Use `fence(SeqCst)` with Acquire/Release accesses rather than SeqCst loads and stores: loom
//! models SeqCst *accesses* as AcqRel (false alarms), while it models `fence(SeqCst)` exactly.
//!
//! This module is support for the model checks, not part of the crate's API.

#[cfg(loom)]
pub use loom::cell::UnsafeCell;
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub use loom::thread::yield_now;

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

/// Gives the CPU to another thread while spinning.
///
/// `std::thread::yield_now` with the `std` feature (the machine may have fewer cores than
/// spinning threads), a spin-loop hint without it. Under loom it is `loom::thread::yield_now`,
/// which tells the model checker that this thread cannot progress until another one runs.
#[cfg(not(loom))]
#[inline]
pub fn yield_now() {
    #[cfg(feature = "std")]
    std::thread::yield_now();
    #[cfg(not(feature = "std"))]
    core::hint::spin_loop();
}

/// [`core::cell::UnsafeCell`] with the API of `loom::cell::UnsafeCell`.
///
/// Every access goes through a closure that receives a raw pointer, so loom (which has the
/// same methods) can check that no read overlaps a write that does not happen-before it.
/// Like [`core::cell::UnsafeCell`] it is `!Sync`: the type that shares it states why its
/// accesses do not race.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline]
    pub const fn new(value: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }

    /// Unwraps the value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Calls `f` with a pointer for reading the value. The caller must make sure no write to
    /// the value can happen concurrently with the reads `f` does.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer for writing the value. The caller must make sure no other
    /// access to the value can happen concurrently with the accesses `f` does.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn unsafe_cell_with_and_with_mut() {
        let c = UnsafeCell::new([1u64, 2]);
        // SAFETY: single-threaded; no other access overlaps these.
        c.with_mut(|p| unsafe { (*p)[1] = 7 });
        // SAFETY: as above.
        assert_eq!(c.with(|p| unsafe { *p }), [1, 7]);
        assert_eq!(c.into_inner(), [1, 7]);
    }

    #[test]
    fn atomics_and_fence() {
        let a = AtomicUsize::new(1);
        a.store(2, Ordering::Release);
        fence(Ordering::SeqCst);
        assert_eq!(a.load(Ordering::Acquire), 2);
        yield_now();
    }
}
