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
//! [`TinyRcuDomain`] wraps it into an [`RcuDomain`](crate::rcu::RcuDomain), so that the
//! provenance API itself (`pte_offset_map`, `pte_offset_map_lock`, `pte_free_defer`, ...) can run
//! under loom over a small backend (`tests/loom_crate.rs`): sections take a free reader slot,
//! and `call_rcu` queues callbacks that [`rcu_barrier`](crate::rcu::RcuDomain::rcu_barrier)
//! runs after a grace period.
//!
//! It is `no_std` and not part of the crate's API. [`TinyRcu`] is allocation-free;
//! [`TinyRcuDomain`] needs `alloc` (its shared state and callback queue).
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
//! read section deadlocks, as in the kernel. [`TinyRcuDomain`] lifts the first two limits
//! (each section claims a slot of its own, so sections nest and move between threads'
//! slots) but has at most [`READER_SLOTS`] sections open at once, and panics past that.

use crate::bound::RcuBound;
use crate::rcu::{RcuCallback, RcuDomain};
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, fence, yield_now};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

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

default_is_new!(TinyRcu);

impl fmt::Debug for TinyRcu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyRcu")
            .field("gp", &self.gp.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A [`TinyRcu`] as an [`RcuDomain`]: the RCU a small backend can use under loom, so that loom
/// drives the crate's own `pte_offset_map`, `pte_offset_map_lock` and `pte_free_defer`.
///
/// - **Read sections** ([`read_lock_raw`](RcuDomain::read_lock_raw)) claim a free reader slot
///   (a compare-and-swap on its `claimed` flag, Acquire), then run [`TinyRcu::read_lock`] on
///   it; the [`TinySection`] token runs [`TinyRcu::read_unlock`] and frees the slot (Release)
///   when dropped. A nested section claims a slot of its own. At most [`READER_SLOTS`] sections
///   may be open at once; one more panics (it never blocks, and never shares a slot).
/// - **`call_rcu`** pushes the callback on a queue under a small spinlock; it never runs it.
/// - **`synchronize`** is [`TinyRcu::synchronize`].
/// - **`rcu_barrier`** takes the whole queue, waits a grace period with
///   [`TinyRcu::synchronize`], and runs the callbacks it took, in queue order, on the calling
///   thread. Concurrent barriers are serialised (the second waits until the first has run its
///   callbacks), so every callback queued before a barrier began has run when it returns.
///   Callbacks must not call `rcu_barrier` themselves (it would wait for itself).
/// - Callbacks still queued when the last handle and the last section are gone run then (no
///   section of the domain can be open any more).
///
/// Everything loom must see (slots, flags, queue) goes through [`crate::sync`]. The reference
/// count that keeps the state alive for tokens is an `alloc::sync::Arc`, invisible to loom on
/// purpose: it is not part of the protocol, and making it a scheduling point would only grow
/// the state space.
///
/// ```
/// use typed_pgtable::rcu::RcuDomain;
/// use typed_pgtable::rcu::tiny::TinyRcuDomain;
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
///
/// let rcu = TinyRcuDomain::new();
/// let freed = Arc::new(AtomicBool::new(false));
/// {
///     let _outer = rcu.read_lock();
///     let _inner = rcu.read_lock(); // a second slot
///     let f = freed.clone();
///     rcu.call_rcu(Box::new(move || f.store(true, Ordering::Release)));
///     assert!(!freed.load(Ordering::Acquire)); // queued, not run
/// }
/// rcu.rcu_barrier();
/// assert!(freed.load(Ordering::Acquire));
/// ```
pub struct TinyRcuDomain {
    shared: Arc<Shared>,
}

/// The state of a [`TinyRcuDomain`], shared with its open sections.
struct Shared {
    rcu: TinyRcu,
    /// Per reader slot of `rcu`: whether an open section owns it.
    claimed: [AtomicBool; READER_SLOTS],
    /// Callbacks queued by `call_rcu` and not yet taken by a barrier. Accessed only while
    /// `queue_lock` is held.
    queue: UnsafeCell<Vec<RcuCallback>>,
    queue_lock: Flag,
    /// Held by `rcu_barrier` from taking the queue until the callbacks it took have run.
    barrier_lock: Flag,
}

// SAFETY: `queue` is the only field that is not `Sync`; it is read and written only inside
// `Shared::with_queue`, while `queue_lock` is held, and the lock's Acquire/Release orders those
// accesses. The callbacks it holds are `Send`, so handing them to the thread that runs them is
// sound. Every other field is an atomic.
unsafe impl Sync for Shared {}

/// A test-and-set spinlock on [`crate::sync`] atomics (loom sees it).
struct Flag(AtomicBool);

/// A held [`Flag`]; releases it when dropped (also when a callback panics).
struct FlagGuard<'a>(&'a Flag);

impl Flag {
    fn new() -> Self {
        Flag(AtomicBool::new(false))
    }

    fn lock(&self) -> FlagGuard<'_> {
        while self
            .0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            yield_now();
        }
        FlagGuard(self)
    }
}

impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.0.store(false, Ordering::Release);
    }
}

impl Shared {
    /// Runs `f` on the queue with `queue_lock` held.
    fn with_queue<R>(&self, f: impl FnOnce(&mut Vec<RcuCallback>) -> R) -> R {
        let _held = self.queue_lock.lock();
        // SAFETY: `queue_lock` is held for the whole access, so no other access to `queue`
        // overlaps it (see the `Sync` impl); the pointer is valid for the cell's lifetime.
        self.queue.with_mut(|q| f(unsafe { &mut *q }))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle and the last section (each holds an `Arc`) are gone: no read section
        // of this domain is open, so the callbacks nobody drained may run now.
        for f in self.with_queue(core::mem::take) {
            f();
        }
    }
}

/// One open read section of a [`TinyRcuDomain`] (its [`RcuDomain::ReadState`]): it owns one
/// reader slot until dropped. `!Send` and `!Sync`: the section belongs to the thread that
/// opened it.
pub struct TinySection {
    shared: Arc<Shared>,
    slot: usize,
    _not_send: RcuBound,
}

impl Drop for TinySection {
    fn drop(&mut self) {
        self.shared.rcu.read_unlock(self.slot);
        // Release: the next section on this slot stores its `gp` after our IDLE in the slot's
        // modification order, so a remover that reads the newer value has also synchronized
        // with everything this section did.
        self.shared.claimed[self.slot].store(false, Ordering::Release);
    }
}

impl fmt::Debug for TinySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinySection")
            .field("slot", &self.slot)
            .finish()
    }
}

impl TinyRcuDomain {
    /// A domain with no open section and no queued callback.
    pub fn new() -> Self {
        TinyRcuDomain {
            shared: Arc::new(Shared {
                rcu: TinyRcu::new(),
                claimed: core::array::from_fn(|_| AtomicBool::new(false)),
                queue: UnsafeCell::new(Vec::new()),
                queue_lock: Flag::new(),
                barrier_lock: Flag::new(),
            }),
        }
    }
}

default_is_new!(TinyRcuDomain);

impl fmt::Debug for TinyRcuDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyRcuDomain")
            .field("rcu", &self.shared.rcu)
            .finish_non_exhaustive()
    }
}

// SAFETY: the RCU guarantee, for every caller of the public API:
//
// - A section is a `TinySection`, created only by `read_lock_raw`: it owns slot `i` from a
//   successful Acquire CAS of `claimed[i]` until its drop, whose Release store of `false`
//   follows `read_unlock(i)`. So one slot serves one section at a time, and each new owner's
//   `read_lock(i)` happens after the previous owner's `read_unlock(i)`: on every slot the
//   sections follow each other in the slot's modification order, exactly the single-owner
//   use `TinyRcu`'s proof (module docs) covers, whichever threads and nesting depths they come
//   from. The token holds an `Arc` of the state, so it can outlive the handle it came from
//   without dangling, and the section stays open (holding off grace periods) until it drops.
// - `synchronize` is `TinyRcu::synchronize`: it returns only after every section open when it
//   was called has ended (the TinyRcu proof, per slot, over all `READER_SLOTS` slots).
// - A callback runs only in `rcu_barrier`, after a `TinyRcu::synchronize` that began after the
//   barrier took it from the queue, and so after `call_rcu` queued it (the queue lock orders
//   the two): every section open at `call_rcu` time has ended by then, and what it did happens
//   before the callback. Or it runs in `Shared::drop`, when no section can be open at all.
//   `call_rcu` itself never runs a callback.
// - Sections nest: each claims its own slot, independent of the others.
unsafe impl RcuDomain for TinyRcuDomain {
    type ReadState = TinySection;

    /// Claims the first free reader slot and opens a section on it.
    ///
    /// # Panics
    /// If all [`READER_SLOTS`] slots are taken by open sections.
    fn read_lock_raw(&self) -> TinySection {
        for (slot, claimed) in self.shared.claimed.iter().enumerate() {
            // Acquire: the previous owner's `read_unlock` of this slot happens before our
            // `read_lock` (see the `Drop` of `TinySection`).
            if claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.shared.rcu.read_lock(slot);
                return TinySection {
                    shared: self.shared.clone(),
                    slot,
                    _not_send: PhantomData,
                };
            }
        }
        panic!("TinyRcuDomain: all {READER_SLOTS} reader slots are taken by open sections");
    }

    fn call_rcu(&self, f: RcuCallback) {
        self.shared.with_queue(|q| q.push(f));
    }

    fn synchronize(&self) {
        self.shared.rcu.synchronize();
    }

    fn rcu_barrier(&self) {
        // Held until the callbacks taken below have run, so that a concurrent barrier cannot
        // return while callbacks queued before it are still waiting here.
        let _barrier = self.shared.barrier_lock.lock();
        let taken = self.shared.with_queue(core::mem::take);
        if taken.is_empty() {
            return;
        }
        self.shared.rcu.synchronize();
        for f in taken {
            f();
        }
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

    #[test]
    fn domain_sections_nest_and_free_their_slots() {
        let rcu = TinyRcuDomain::new();
        let guards: Vec<_> = (0..READER_SLOTS).map(|_| rcu.read_lock()).collect();
        let full = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _one_more = rcu.read_lock();
        }));
        assert!(full.is_err(), "a fifth section must not share a slot");
        drop(guards);
        // Every slot is free again: as many sections as before open, and a grace period
        // with none open returns at once.
        let again: Vec<_> = (0..READER_SLOTS).map(|_| rcu.read_lock()).collect();
        drop(again);
        rcu.synchronize();
    }

    #[test]
    fn domain_barrier_waits_for_an_open_section_and_runs_callbacks_in_order() {
        let rcu = Arc::new(TinyRcuDomain::new());
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let entered = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let reader = {
            let (rcu, entered, left) = (rcu.clone(), entered.clone(), left.clone());
            thread::spawn(move || {
                let _g = rcu.read_lock();
                entered.store(true, Ordering::Release);
                thread::sleep(Duration::from_millis(50));
                left.store(true, Ordering::Relaxed);
            })
        };
        while !entered.load(Ordering::Acquire) {
            thread::yield_now();
        }
        for i in 0..3 {
            let (order, left) = (order.clone(), left.clone());
            rcu.call_rcu(Box::new(move || {
                assert!(
                    left.load(Ordering::Relaxed),
                    "callback ran inside a section"
                );
                order.lock().unwrap().push(i);
            }));
        }
        assert!(order.lock().unwrap().is_empty(), "call_rcu ran a callback");
        rcu.rcu_barrier();
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        reader.join().unwrap();
        rcu.rcu_barrier(); // nothing queued: returns at once
    }

    #[test]
    fn domain_runs_leftover_callbacks_when_the_last_section_ends() {
        let rcu = TinyRcuDomain::new();
        let ran = Arc::new(AtomicBool::new(false));
        let section = rcu.read_lock_raw();
        let r = ran.clone();
        rcu.call_rcu(Box::new(move || r.store(true, Ordering::Release)));
        drop(rcu);
        assert!(!ran.load(Ordering::Acquire), "ran while a section was open");
        drop(section);
        assert!(ran.load(Ordering::Acquire));
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
