//! [`PgtableBackend`] for [`HeapPgtable`], and its walk locks.
//!
//! # How the backend keeps the trait's contract
//!
//! 1. **RCU covers tables.** A table leaves a slot only through `pmdp_collapse_flush` (or
//!    [`HeapPgtable`]'s `Drop`, which has `&mut self`). After that it is freed by
//!    `pte_free_defer`, whose `call_rcu` callback deallocates it after a grace period of the
//!    backend's [`Qsbr`], or by `pte_free`, which the trait allows only for a table no walker
//!    can reach. The PTE lock is in the same allocation as the table, so it is valid exactly as
//!    long as the table's memory.
//! 2. **Removal takes both locks.** The only write of a slot that names a table is the swap in
//!    `pmdp_collapse_flush`, which the provenance layer calls with the PMD and PTE locks held
//!    or under [`HeapMmExclusive`]. [`HeapPgtable::pmdp_huge_get_and_clear`] refuses a slot
//!    that names a table, and [`HeapPgtable::set_pmd_huge`] one that is not none.
//! 3. **Publication after fill.** `pmd_populate` stores the descriptor with Release ordering,
//!    and every slot read (`pmdp_get_lockless`) is an Acquire load, so a reader that sees the
//!    new descriptor sees every write made to the table before.
//! 4. **Classification never misleads.** A [`HeapPmd`] with table type bits can only be made
//!    from a real table ([`HeapPmd::of_table`]; `from_leaf_bits` refuses table bits), and
//!    slots hold only values this backend stored, so `pmd_table` returns a table only for a
//!    value that names one of the backend's tables.
//!
//! There is one PMD table, so one PMD lock: `same_pmd_lock` is always true and `pmd_lock`
//! ignores which slot it is asked for. There is no TLB, so `pmdp_collapse_flush` is the swap.

use super::desc::Pte;
use super::table::{HeapPmd, PmdSlot, PteTableRef};
use super::{HeapPgtable, Qsbr};
use crate::error::NoMap;
use crate::provenance::{
    ExclusiveAccess, InTable, InstallLock, LocklessWalk, MapKind, PgtableBackend, PgtableError,
    PmdRef, WalkLock,
};
use crate::rcu::RcuDomain;
use crate::rcu::RcuGuard;
use alloc::boxed::Box;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

impl HeapPgtable {
    /// Frees `t` now and counts it.
    ///
    /// # Safety
    /// As [`PteTableRef::free`].
    pub(super) unsafe fn free_now(&self, t: PteTableRef) {
        // SAFETY: the caller's promise.
        unsafe { t.free() };
        self.stats.freed.fetch_add(1, Ordering::Release);
    }
}

// SAFETY: contract items 1-4 as written out in the module docs.
unsafe impl PgtableBackend for HeapPgtable {
    type Rcu = Qsbr;
    type Error = PgtableError;
    type PmdSlot = PmdSlot;
    type PmdSnapshot = HeapPmd;
    type Table = PteTableRef;
    type Pte = Pte;

    fn rcu(&self) -> &Qsbr {
        &self.rcu
    }
    fn pmdp_get_lockless(&self, slot: &PmdSlot) -> HeapPmd {
        slot.load()
    }
    fn pmd_same(&self, a: &HeapPmd, b: &HeapPmd) -> bool {
        a.bits() == b.bits()
    }
    fn pmd_table(&self, pmd: &HeapPmd) -> Result<PteTableRef, NoMap> {
        pmd.table()
    }
    fn pmd_of_table(&self, table: &PteTableRef) -> HeapPmd {
        HeapPmd::of_table(*table)
    }
    unsafe fn ptep_get(&self, t: &PteTableRef, i: usize, _: MapKind) -> Pte {
        // SAFETY: the caller keeps the table protected; `i < PTRS_PER_TABLE`.
        Pte::from_bits(unsafe { t.entry(i) }.load(Ordering::Acquire))
    }
    unsafe fn set_pte(
        &self,
        t: &PteTableRef,
        i: usize,
        pte: Pte,
        _: MapKind,
    ) -> Result<(), PgtableError> {
        // SAFETY: as `ptep_get`; the caller holds the PTE lock or owns the table.
        unsafe { t.entry(i) }.store(pte.bits(), Ordering::Release);
        Ok(())
    }
    unsafe fn ptep_get_and_clear(&self, t: &PteTableRef, i: usize, _: MapKind) -> Pte {
        // SAFETY: as `set_pte`.
        Pte::from_bits(unsafe { t.entry(i) }.swap(0, Ordering::AcqRel))
    }
    unsafe fn pte_lock(&self, t: &PteTableRef) {
        // SAFETY: the table, and so its lock, is protected.
        unsafe { t.ptl() }.lock()
    }
    unsafe fn pte_unlock(&self, t: &PteTableRef) {
        // SAFETY: protected, and the caller holds the lock.
        unsafe { t.ptl().unlock() }
    }
    unsafe fn pmd_lock(&self, _: &PmdSlot) {
        self.root.page().pml.lock()
    }
    unsafe fn pmd_trylock(&self, _: &PmdSlot) -> bool {
        self.root.page().pml.try_lock()
    }
    unsafe fn same_pmd_lock(&self, _: &PmdSlot, _: &PmdSlot) -> bool {
        true
    }
    unsafe fn pmd_unlock(&self, _: &PmdSlot) {
        // SAFETY: the caller holds the root table's PMD lock, the only one.
        unsafe { self.root.page().pml.unlock() }
    }
    unsafe fn pmd_populate(&self, slot: &PmdSlot, t: &PteTableRef) {
        slot.store(HeapPmd::of_table(*t))
    }
    unsafe fn pmdp_collapse_flush(&self, slot: &PmdSlot) -> HeapPmd {
        slot.swap(HeapPmd::NONE)
    }
    unsafe fn pgtable_trans_huge_deposit(&self, slot: &PmdSlot, t: &PteTableRef) -> bool {
        // The PMD lock is held (caller); a slot of another table is refused.
        let Some(i) = self.root.index_of(slot) else {
            return false;
        };
        let link = &self.root.page().deposits[i];
        let null = ptr::null_mut();
        link.compare_exchange(null, t.as_ptr(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
    unsafe fn pgtable_trans_huge_withdraw(&self, slot: &PmdSlot) -> Option<PteTableRef> {
        let link = &self.root.page().deposits[self.root.index_of(slot)?];
        let p = NonNull::new(link.swap(ptr::null_mut(), Ordering::AcqRel))?;
        // SAFETY: a deposit link holds only a handle's pointer.
        Some(unsafe { PteTableRef::from_ptr(p) })
    }
    fn pte_alloc_one(&self) -> Result<PteTableRef, PgtableError> {
        let t = PteTableRef::alloc().ok_or(PgtableError::OutOfMemory)?;
        self.stats.allocated.fetch_add(1, Ordering::Release);
        Ok(t)
    }
    unsafe fn pte_free(&self, t: &PteTableRef) {
        // SAFETY: the caller owns the table and no walker can hold or reach it.
        unsafe { self.free_now(*t) }
    }
    unsafe fn pte_free_defer(&self, t: &PteTableRef) {
        let (t, stats) = (*t, self.stats.clone());
        self.rcu.call_rcu(Box::new(move || {
            // SAFETY: unreachable from every slot since before `call_rcu` (caller), and a grace
            // period has passed, so no walker is inside it; we own it.
            unsafe { t.free() };
            stats.freed.fetch_add(1, Ordering::Release);
        }));
    }
}

/// The mm lock held until the value drops: shared (`mmap_read_lock`) or, if `EXCLUSIVE`,
/// exclusively (`mmap_write_lock`). The state both walk locks wrap.
///
/// # Invariants
/// `heap.mm` is held (exclusively if `EXCLUSIVE`) until the value drops.
struct MmHeld<'h, const EXCLUSIVE: bool> {
    heap: &'h HeapPgtable,
    _not_send: PhantomData<*const ()>,
}

impl<'h, const EXCLUSIVE: bool> MmHeld<'h, EXCLUSIVE> {
    fn new(heap: &'h HeapPgtable) -> Self {
        if EXCLUSIVE {
            heap.mm.write();
        } else {
            heap.mm.read();
        }
        // INVARIANT: taken just above.
        MmHeld {
            heap,
            _not_send: PhantomData,
        }
    }
}

impl<const EXCLUSIVE: bool> Drop for MmHeld<'_, EXCLUSIVE> {
    fn drop(&mut self) {
        if EXCLUSIVE {
            // SAFETY: held exclusively (type invariant), released once.
            unsafe { self.heap.mm.write_unlock() }
        } else {
            // SAFETY: held shared (type invariant), released once.
            unsafe { self.heap.mm.read_unlock() }
        }
    }
}

/// What both guards of the mm lock have alike: the constructor, which takes the lock in the
/// guard's mode, `pmd_offset`, and [`WalkLock`] over the root table. A macro because a trait
/// impl is written once per type.
macro_rules! mm_lock_guard {
    ($guard:ident) => {
        impl<'h> $guard<'h> {
            pub(super) fn new(heap: &'h HeapPgtable) -> Self {
                $guard(MmHeld::new(heap))
            }

            /// The `InTable` slot for `addr` (`pmd_offset`, the provided walk of [`WalkLock`]),
            /// or `None` outside the span; borrows the lock shared.
            pub fn pmd_offset(&self, addr: u64) -> Option<PmdRef<'h, '_, HeapPgtable, InTable>> {
                WalkLock::pmd_offset(self, addr).ok().flatten()
            }
        }

        // SAFETY: the slot is in the root table, which stays attached and alive as long as the
        // backend, and so while the lock is borrowed; the token is `!Send` (raw-pointer marker
        // of `MmHeld`).
        unsafe impl<'h> WalkLock<'h, HeapPgtable> for $guard<'h> {
            type Error = PgtableError;

            fn backend(&self) -> &'h HeapPgtable {
                self.0.heap
            }

            fn pmd_slot(&self, addr: u64) -> Result<Option<&PmdSlot>, PgtableError> {
                Ok(self.0.heap.pmd_slot(addr))
            }
        }
    };
}

/// The mm lock held shared (`mmap_read_lock`): walks, locks, retracts and installs.
///
/// # Invariants
/// `heap.mm` is held shared until the value drops (the invariant of `MmHeld`).
#[must_use = "the mm lock is released as soon as the guard is dropped"]
pub struct HeapMm<'h>(MmHeld<'h, false>);

mm_lock_guard!(HeapMm);

// SAFETY: `Ok` only for this lock's own backend and one of its slots; while the mm lock is held
// shared no `HeapMmExclusive` (the only exclusivity remover) exists.
unsafe impl InstallLock<HeapPgtable> for HeapMm<'_> {
    fn allows_install(&self, backend: &HeapPgtable, slot: &PmdSlot) -> Result<(), PgtableError> {
        let ours = ptr::eq(self.0.heap, backend) && backend.root.index_of(slot).is_some();
        if ours {
            Ok(())
        } else {
            Err(PgtableError::WrongBackend)
        }
    }
}

/// The mm lock held exclusively (`mmap_write_lock`): no other walk lock exists, so slots may
/// be cleared without the PTE lock ([`pmd_clear_exclusive`](crate::provenance::pmd_clear_exclusive)).
/// Lockless walkers may still read; cleared tables are `Retired` and freed after a grace period.
///
/// # Invariants
/// `heap.mm` is held exclusively until the value drops (the invariant of `MmHeld`).
#[must_use = "the mm lock is released as soon as the guard is dropped"]
pub struct HeapMmExclusive<'h>(MmHeld<'h, true>);

mm_lock_guard!(HeapMmExclusive);

// SAFETY: the slots come from the root table, which lives as long as the backend (and so
// longer than any read section of its domain).
unsafe impl LocklessWalk for HeapPgtable {
    fn pmd_slot_lockless<'g>(
        &'g self,
        _: &'g RcuGuard<'_, Qsbr>,
        addr: u64,
    ) -> Option<&'g PmdSlot> {
        self.pmd_slot(addr)
    }
}

// SAFETY: while the value lives the mm lock is held exclusively, so no `HeapMm` (the only other
// source of `InTable` slots and thus of PMD-lock removers) exists; the value is `!Send` and
// `!Sync` (raw-pointer marker); covered slots are in the root table, alive while `heap` is.
unsafe impl<'h> ExclusiveAccess<'h, HeapPgtable> for HeapMmExclusive<'h> {
    fn backend(&self) -> &'h HeapPgtable {
        self.0.heap
    }
    fn covered_slot(&self, addr: u64) -> Result<Option<&PmdSlot>, PgtableError> {
        self.0
            .heap
            .pmd_slot(addr)
            .map(Some)
            .ok_or(PgtableError::NoSlot { addr })
    }
}
