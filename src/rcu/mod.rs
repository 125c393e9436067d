//! RCU domains: read sections with a lifetime, deferred work after a grace period.
//!
//! # The model
//!
//! A *read section* is a stretch of code during which the memory of every PTE table that the
//! reader could have reached stays valid, even if a remover unlinks the table meanwhile. A
//! *grace period* ends once every read section that was open when it started has closed. A
//! remover that unlinked a table hands its free to [`RcuDomain::call_rcu`]; the domain runs it
//! after a grace period, so no reader that could have seen the table is still looking.
//!
//! In Rust the read section is a value: [`RcuDomain::read_lock`] returns an [`RcuGuard`] whose
//! lifetime is the section. Everything read under it (a copied pmd, a PTE map) borrows the guard,
//! so the borrow checker ends those uses before the section ends. Guards are `!Send` (a read
//! section belongs to the CPU, here the thread, that opened it) and nest freely.
//!
//! Each domain is its own reclamation world: a guard of domain A holds off nothing in domain B.
//! The provenance API therefore checks that a guard belongs to the backend it is used with.
//!
//! The trait is `no_std` (it needs `alloc` for boxed callbacks). The default backend,
//! [`EpochRcu`], builds on [`crossbeam-epoch`](https://docs.rs/crossbeam-epoch) with one
//! collector per domain, and needs the `std` feature.
//!
//! ```
//! use typed_pgtable::rcu::{EpochRcu, RcuDomain};
//! use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
//!
//! let rcu = EpochRcu::new();
//! let freed = Arc::new(AtomicBool::new(false));
//! {
//!     let _outer = rcu.read_lock();
//!     let _inner = rcu.read_lock(); // nested sections are fine
//!     let f = freed.clone();
//!     rcu.call_rcu(Box::new(move || f.store(true, Ordering::Release)));
//!     // A grace period cannot end while this thread is inside a section.
//!     assert!(!freed.load(Ordering::Acquire));
//! }
//! rcu.rcu_barrier();
//! assert!(freed.load(Ordering::Acquire));
//! ```

use crate::bound::RcuBound;
use alloc::boxed::Box;
use core::fmt;
use core::marker::PhantomData;

#[cfg(feature = "std")]
mod epoch;
#[cfg(feature = "std")]
pub use epoch::{EpochRcu, EpochSection, EpochStats};
#[doc(hidden)]
pub mod tiny;

/// A deferred callback, run once after a grace period.
pub type RcuCallback = Box<dyn FnOnce() + Send + 'static>;

/// An RCU reclamation domain.
///
/// # Safety
///
/// Implementors promise the RCU guarantee that the whole crate rests on: a callback passed to
/// [`call_rcu`](Self::call_rcu) runs only after every read section (every value returned by
/// [`read_lock_raw`](Self::read_lock_raw) that is still alive) that was open when `call_rcu`
/// was called has ended, and [`synchronize`](Self::synchronize) returns only after every read
/// section that was open when it was called has ended. Read sections must nest.
pub unsafe trait RcuDomain: Sync {
    /// The backend's token for one open read section; dropping it ends the section.
    type ReadState;

    /// Opens a read section and returns the backend's raw token for it.
    ///
    /// Prefer [`read_lock`](Self::read_lock), which wraps the token in a guard with a lifetime.
    fn read_lock_raw(&self) -> Self::ReadState;

    /// Runs `f` after a grace period (`call_rcu`). Never blocks and never runs `f` inline while
    /// the caller may still be inside a read section.
    fn call_rcu(&self, f: RcuCallback);

    /// Blocks until a grace period has elapsed (`synchronize_rcu`).
    ///
    /// Calling it from inside a read section of the same domain would deadlock, as in the
    /// kernel; [`EpochRcu`] panics with the lock checker's report instead.
    fn synchronize(&self);

    /// Blocks until every callback queued by [`call_rcu`](Self::call_rcu) before this call has
    /// run (`rcu_barrier`).
    fn rcu_barrier(&self);

    /// Opens a read section (`rcu_read_lock`). The guard ends it when dropped.
    #[track_caller]
    fn read_lock(&self) -> RcuGuard<'_, Self>
    where
        Self: Sized,
    {
        RcuGuard {
            domain: self,
            _state: self.read_lock_raw(),
            _not_send: PhantomData,
        }
    }
}

/// Evidence that a read section of domain `D` is open on this thread for `'d`.
///
/// # Invariants
///
/// While the guard lives, the read section it was created for is open: no grace period of
/// `domain` that starts after the guard was created can end. The guard is `!Send` and `!Sync`
/// because a read section belongs to the thread that opened it.
#[must_use = "a read section ends as soon as its guard is dropped"]
pub struct RcuGuard<'d, D: RcuDomain> {
    domain: &'d D,
    _state: D::ReadState,
    _not_send: RcuBound,
}

impl<'d, D: RcuDomain> RcuGuard<'d, D> {
    /// The domain this section belongs to.
    pub fn domain(&self) -> &'d D {
        self.domain
    }

    /// Ends the read section (`rcu_read_unlock`); the same as dropping the guard.
    pub fn unlock(self) {}
}

impl<D: RcuDomain> fmt::Debug for RcuGuard<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcuGuard")
            .field("domain", &(self.domain as *const D))
            .finish()
    }
}
