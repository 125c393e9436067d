//! A tiny RCU for model checking: a grace-period counter and a fixed set of reader slots,
//! written against [`crate::sync`] so that loom can explore it.
//!
//! # Why it exists
//!
//! The crate's default backend, [`EpochRcu`](crate::rcu::EpochRcu), is built on
//! crossbeam-epoch, and running crossbeam-epoch under loom is the wrong way to check *this*
//! crate's protocols:
//!
//! - it only switches to loom's atomics with **both** its `loom` feature **and**
//!   `RUSTFLAGS="--cfg crossbeam_loom"` (the feature alone silently keeps std atomics);
//! - its global epoch, garbage bags and thread-locals multiply the state space. Measured on
//!   the project's 2-core machine (`docs/practices.md` §5), one reader and one writer cost
//!   4,510 interleavings at a preemption bound of 2, 22,570 (2.6 s) at 3 and 128,340 (13.8 s)
//!   at 4, and did not finish in 400 s unbounded; a tiny RCU like this one with *two*
//!   readers took 310 interleavings at 2, 2,230 (0.28 s) at 3 and 12,490 (1.1 s) at 4.
//!
//! crossbeam's internals are covered by crossbeam's own loom and Miri CI. What loom checks
//! here is the page-table protocol *on top of* an RCU (`tests/loom.rs`): lockless walkers
//! against retract with deferred free, the lock-recheck-retry loop of `pte_offset_map_lock`,
//! and table publication. This RCU is small enough that loom explores it exhaustively within
//! the bound, and honest enough (the same grace-period guarantee) that a protocol that passes
//! on it relies on nothing more than what [`RcuDomain`](crate::rcu::RcuDomain) promises.
//!
//! It is `no_std`, allocation-free and not part of the crate's API.
//!
//! # The algorithm
//!
//! A global grace-period counter `gp` starts at 1; each reader slot holds 0 (idle) or the value
//! of `gp` its current section read when it began.
//!
//! - [`read_lock`](TinyRcu::read_lock): load `gp` (Relaxed), store it in the slot (Release),
//!   then `fence(SeqCst)`.
//! - [`read_unlock`](TinyRcu::read_unlock): store 0 in the slot (Release).
//! - [`synchronize`](TinyRcu::synchronize): `fence(SeqCst)`, `target = gp.fetch_add(1) + 1`,
//!   then for every slot spin (Acquire loads, `yield_now`) while it holds a non-zero value
//!   below `target`.
//!
//! Why a remover that unpublished a pointer before `synchronize` can then free it: the two
//! SeqCst fences are totally ordered. If the reader's fence comes first, the remover's slot
//! load sees the reader's slot store (or a later one), so it waits until an Acquire load reads
//! a Release store the reader made after its section, and the section's reads happen-before
//! the free. If the remover's fence comes first, the reader's pointer load after its own fence
//! sees the unpublish, so the reader never reaches the table. A reader whose slot value is at
//! least `target` read `gp` from the remover's `fetch_add` (or a later one), so the remover's
//! fence synchronizes with the reader's fence: that section began after the unpublish and is
//! not waited for. The Release store at `read_lock` matters too: a remover that sees a *newer*
//! section's value in the slot has still synchronized with everything the older one did.
//!
//! All accesses are Acquire/Release plus `fence(SeqCst)`, never SeqCst loads or stores: loom
//! models SeqCst accesses as AcqRel and would raise false alarms, and it models SeqCst fences
//! exactly.
//!
//! # Limits
//!
//! A slot belongs to one thread at a time, and sections on one slot do not nest. `gp` is a
//! `usize` and is assumed not to wrap. Calling [`synchronize`](TinyRcu::synchronize) inside a
//! read section deadlocks, as in the kernel.

use crate::sync::{AtomicUsize, Ordering, fence, yield_now};
use core::fmt;

/// Number of reader slots of a [`TinyRcu`].
pub const READER_SLOTS: usize = 4;

/// The value of a slot with no open section.
const IDLE: usize = 0;

/// A tiny RCU domain with [`READER_SLOTS`] reader slots (see the [module docs](self)).
///
/// ```
/// use typed_pgtable::rcu::tiny::TinyRcu;
///
/// let rcu = TinyRcu::new();
/// rcu.read_lock(0);
/// // ... read RCU-protected data ...
/// rcu.read_unlock(0);
/// rcu.synchronize(); // no section open: returns at once
/// ```
pub struct TinyRcu {
    /// The grace-period counter; starts at 1 so that [`IDLE`] never names a section.
    gp: AtomicUsize,
    /// Per reader: [`IDLE`] or the `gp` its open section began with.
    readers: [AtomicUsize; READER_SLOTS],
}

impl TinyRcu {
    /// A domain with no open read section.
    pub fn new() -> Self {
        TinyRcu {
            gp: AtomicUsize::new(1),
            readers: core::array::from_fn(|_| AtomicUsize::new(IDLE)),
        }
    }

    /// Opens a read section on reader slot `slot` (`rcu_read_lock`). Returns `false`, and opens
    /// nothing, if `slot >= READER_SLOTS`.
    #[inline]
    pub fn read_lock(&self, slot: usize) -> bool {
        let opened = self.enter(slot);
        // Orders the slot store before every load of the section (store-buffering with the
        // fence in `synchronize`).
        fence(Ordering::SeqCst);
        opened
    }

    /// Ends the read section open on `slot` (`rcu_read_unlock`). Returns `false`, and does
    /// nothing, if `slot >= READER_SLOTS`.
    #[inline]
    pub fn read_unlock(&self, slot: usize) -> bool {
        match self.readers.get(slot) {
            Some(r) => {
                r.store(IDLE, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Waits until every read section that was open when it was called has ended
    /// (`synchronize_rcu`). Must not be called inside a read section.
    pub fn synchronize(&self) {
        // Orders the caller's earlier unpublish before the slot loads below.
        fence(Ordering::SeqCst);
        let target = self.gp.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        for reader in &self.readers {
            loop {
                let began = reader.load(Ordering::Acquire);
                if began == IDLE || began >= target {
                    break;
                }
                yield_now();
            }
        }
    }

    /// A deliberately **wrong** `read_lock` without its `fence(SeqCst)`, so that the loom suite
    /// can show the fence is needed (a remover may then miss the reader and free under it).
    /// Never use it for anything else.
    #[doc(hidden)]
    pub fn read_lock_without_fence(&self, slot: usize) -> bool {
        self.enter(slot)
    }

    #[inline]
    fn enter(&self, slot: usize) -> bool {
        let Some(reader) = self.readers.get(slot) else {
            return false;
        };
        let gp = self.gp.load(Ordering::Relaxed);
        // Release: a remover that reads this value has synchronized with everything the
        // previous section on this slot did.
        reader.store(gp, Ordering::Release);
        true
    }
}

impl Default for TinyRcu {
    fn default() -> Self {
        TinyRcu::new()
    }
}

impl fmt::Debug for TinyRcu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyRcu")
            .field("gp", &self.gp.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom), feature = "std"))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64};
    use std::thread;
    use std::time::Duration;
    use std::vec::Vec;

    const FILLED: u64 = 0x600d;
    const POISON: u64 = 0xdead;

    #[test]
    fn synchronize_without_readers_returns() {
        let rcu = TinyRcu::new();
        rcu.synchronize();
        rcu.read_lock(3);
        rcu.read_unlock(3);
        rcu.synchronize();
        assert!(std::format!("{rcu:?}").contains("gp: 3"));
    }

    #[test]
    fn synchronize_waits_for_an_open_section() {
        let rcu = Arc::new(TinyRcu::new());
        let entered = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let reader = {
            let (rcu, entered, left) = (rcu.clone(), entered.clone(), left.clone());
            thread::spawn(move || {
                rcu.read_lock(1);
                entered.store(true, Ordering::Release);
                thread::sleep(Duration::from_millis(50));
                left.store(true, Ordering::Relaxed);
                rcu.read_unlock(1);
            })
        };
        while !entered.load(Ordering::Acquire) {
            thread::yield_now();
        }
        rcu.synchronize();
        assert!(
            left.load(Ordering::Relaxed),
            "synchronize returned inside a read section"
        );
        reader.join().unwrap();
    }

    /// Readers follow a published table and check it was not poisoned; the remover swaps in a
    /// new table, waits a grace period and poisons the old one.
    #[test]
    fn readers_never_see_a_poisoned_table() {
        type Table = [AtomicU64; 4];
        fn table() -> *mut Table {
            Box::into_raw(Box::new(core::array::from_fn(|_| AtomicU64::new(FILLED))))
        }
        let rcu = Arc::new(TinyRcu::new());
        let slot = Arc::new(AtomicPtr::new(table()));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (rcu, slot, stop) = (rcu.clone(), slot.clone(), stop.clone());
                thread::spawn(move || {
                    let mut sections = 0u64;
                    while !stop.load(Ordering::Relaxed) || sections == 0 {
                        rcu.read_lock(r);
                        let t = slot.load(Ordering::Acquire);
                        // SAFETY: `t` was published and is freed (poisoned, then dropped after
                        // the join) only after a grace period that covers this section.
                        for e in unsafe { &*t } {
                            assert_eq!(e.load(Ordering::Relaxed), FILLED, "use after free");
                        }
                        rcu.read_unlock(r);
                        sections += 1;
                    }
                    sections
                })
            })
            .collect();
        let mut retired = Vec::new();
        for _ in 0..300 {
            let old = slot.swap(table(), Ordering::AcqRel);
            rcu.synchronize();
            // SAFETY: unpublished and a grace period has passed; kept alive until the end.
            for e in unsafe { &*old } {
                e.store(POISON, Ordering::Relaxed);
            }
            retired.push(old);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        retired.push(slot.load(Ordering::Relaxed));
        for t in retired {
            // SAFETY: every thread has joined; each pointer came from `Box::into_raw` once.
            drop(unsafe { Box::from_raw(t) });
        }
    }
}
