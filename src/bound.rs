//! Thread-bound markers: why a guard, a map or a lock cannot leave its thread.
//!
//! A read section belongs to the CPU (here, the thread) that opened it; a spinlock is released
//! by the thread that took it; a walk lock is the holder's proof, not something another thread
//! can borrow. So every guard, map and lock of this crate is `!Send` and `!Sync`.
//!
//! Rust has no stable way to write `impl !Send`, and a raw pointer or a foreign guard inside a
//! type would make the compiler's error name that pointer or guard. Each `!Send` type here
//! instead holds a `PhantomData` of one of the trait objects below (a `dyn Trait` without
//! `+ Send + Sync` is neither), so the error reads as the rule it enforces:
//!
//! ```text
//! error[E0277]: `(dyn AnRcuReadSectionBelongsToTheThreadThatOpenedIt + 'static)` cannot be sent between threads safely
//! ```
//!
//! The traits have no methods and no implementations; they exist only to be named.

use core::marker::PhantomData;

/// Named by the `!Send`/`!Sync` error of RCU guards, copied pmds and PTE maps: a read section
/// is open on one thread, and everything read under it is valid only there.
pub trait AnRcuReadSectionBelongsToTheThreadThatOpenedIt {}

/// Named by the `!Send`/`!Sync` error of PMD and PTE lock guards: a spinlock is released by
/// the thread that took it.
pub trait ASpinlockIsReleasedByTheThreadThatTookIt {}

/// Named by the `!Send`/`!Sync` error of walk-lock tokens (mmap, VMA, rmap, exclusive): the
/// lock is held by one thread, and only that thread walks under it.
pub trait AWalkLockBelongsToTheThreadThatTookIt {}

/// Zero-sized field that makes a read-section type `!Send` and `!Sync`.
pub(crate) type RcuBound = PhantomData<dyn AnRcuReadSectionBelongsToTheThreadThatOpenedIt>;
/// Zero-sized field that makes a spinlock guard `!Send` and `!Sync`.
pub(crate) type SpinBound = PhantomData<dyn ASpinlockIsReleasedByTheThreadThatTookIt>;
/// Zero-sized field that makes a walk-lock token `!Send` and `!Sync`.
#[cfg(feature = "std")]
pub(crate) type WalkBound = PhantomData<dyn AWalkLockBelongsToTheThreadThatTookIt>;

/// A value that is only ever a field of a thread-bound type (one holding one of the markers
/// above), and so never leaves the thread that made it, whatever its own auto traits say.
/// Wrapping foreign `!Send` guards in it keeps their names out of the compiler's errors.
///
/// # Invariants
/// Every `OnItsThread` is a private field of a type that is `!Send` and `!Sync` through one
/// of the markers of this module, and is never moved out of it.
#[cfg(feature = "std")]
pub(crate) struct OnItsThread<T>(pub(crate) T);

// SAFETY: by the type invariant the wrapper never crosses threads on its own: its owner is
// `!Send` and `!Sync`, so the wrapped value is used and dropped on the thread that made it.
#[cfg(feature = "std")]
unsafe impl<T> Send for OnItsThread<T> {}
// SAFETY: as above; the owner is `!Sync`, so no reference to the wrapper reaches another
// thread.
#[cfg(feature = "std")]
unsafe impl<T> Sync for OnItsThread<T> {}
