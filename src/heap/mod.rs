//! A second backend with real pointers: page tables in heap memory, arm64 descriptors, a QSBR
//! RCU and spinlocks of its own (feature `heap`, `no_std` + `alloc`).
//!
//! # The model
//!
//! [`HeapPgtable`] is one address space of **1 GiB**: a single root PMD table of 512 slots,
//! each covering 2 MiB, and the PTE tables those slots name, 512 entries of 4 KiB each. There
//! are no pgd and pud levels: the root PMD table is allocated with the address space and lives
//! exactly as long, so a walk never has to worry about the upper levels going away (the kernel's
//! mmap lock makes the same promise for them). Everything the provenance layer protects is
//! below it: PTE tables come and go at run time, and that is where the use-after-free risk is.
//!
//! - **Tables are real memory** ([`table`]): each PTE table is a 4 KiB-aligned allocation of
//!   512 descriptors; a PMD slot holds an arm64 table descriptor ([`desc`]) whose output
//!   address is the table's real address. Freeing a table calls `dealloc`, so a walker that
//!   touches a freed table is a real use-after-free, which Miri reports.
//! - **Protection is RCU** ([`qsbr`]): lockless walkers read the slot and the table inside a
//!   read section of the backend's [`Qsbr`] domain; a retracted table is freed by an RCU
//!   callback after a grace period ([`PgtableBackend::pte_free_defer`](crate::provenance::PgtableBackend::pte_free_defer)).
//! - **Locks are spinlocks** ([`spin`]): one PMD lock for the root table, one split PTE lock per
//!   PTE table (in the page beside the table, so it lives and dies with it), and a
//!   reader-writer **mm lock** for walks.
//! - **Pages are numbers**: a PTE maps a page frame number; no data memory stands behind it.
//!   The backend checks page tables, not data, and a pfn is enough to tell PTEs apart.
//!
//! # Walks
//!
//! | lock | type | gives | allows |
//! |---|---|---|---|
//! | mm lock, shared | [`HeapMm`] from [`HeapPgtable::mmap_read_lock`] | `InTable` slots ([`HeapMm::pmd_offset`]) | walking, locking, retracting, installing ([`InstallLock`](crate::provenance::InstallLock)) |
//! | mm lock, exclusive | [`HeapMmExclusive`] from [`HeapPgtable::mmap_write_lock`] | `InTable` slots of its own | clearing slots without the PTE lock ([`ExclusiveAccess`](crate::provenance::ExclusiveAccess)) |
//! | an RCU section | a [`Qsbr`] guard | `CopiedUnderRcu` copies ([`HeapPgtable::pmd_copy_lockless`], `pmdp_get_lockless`) | lockless reads (GUP-fast) |
//!
//! ```
//! use typed_pgtable::heap::{HeapPgtable, desc::{pfn_pte, pte_pfn, Prot}};
//! use typed_pgtable::provenance::{pmd_lock, pte_offset_map, DetachedPmd, PgtableBackend};
//! use typed_pgtable::rcu::RcuDomain;
//!
//! let heap = HeapPgtable::new()?;
//! let mm = heap.mmap_read_lock();
//! let pmd = mm.pmd_offset(0x20_0000).expect("inside the 1 GiB");
//! // Fill a fresh table, then publish it under the PMD lock.
//! let mut table = DetachedPmd::pte_alloc_one(&heap)?;
//! table.pte_offset_map_mut(0x20_3000).set_pte(0x20_3000, pfn_pte(0x42, Prot::USER))?;
//! table.pmd_populate(&mm, &pmd_lock(&pmd)).map_err(|r| r.error)?;
//! drop(mm);
//! // A lockless walk.
//! let guard = heap.rcu().read_lock();
//! let copy = heap.pmd_copy_lockless(&guard, 0x20_3000)?.expect("inside the 1 GiB");
//! assert_eq!(pte_pfn(pte_offset_map(&copy, 0x20_3000).unwrap().pte()), 0x42);
//! # Ok::<(), typed_pgtable::provenance::PgtableError>(())
//! ```
//!
//! Dropping a [`HeapPgtable`] frees every table it still owns: those installed in slots and
//! those deposited at once, those retired with `pte_free_defer` when its RCU domain goes (their
//! callbacks run then, as no read section can be open any more).

pub mod desc;
pub mod qsbr;
pub mod spin;
pub mod table;

mod backend;

pub use backend::{HeapMm, HeapMmExclusive};
pub use qsbr::{Qsbr, QsbrSection};
pub use table::{HeapPmd, PmdSlot, PteTableRef};

use crate::provenance::PgtableError;
use crate::provenance::{CopiedUnderRcu, LocklessWalk, PmdLockGuard, PmdRef};
use crate::rcu::RcuGuard;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::RwSpinLock;
use table::PmdTable;

/// The span one [`HeapPgtable`] translates: `[0, 1 GiB)`.
pub const HEAP_SPAN: u64 = 1 << desc::PUD_SHIFT;

/// Table counts, shared with the RCU callbacks that free retired tables.
#[derive(Debug, Default)]
struct Stats {
    allocated: AtomicUsize,
    freed: AtomicUsize,
}

/// A 1 GiB address space of heap page tables (see the [module docs](self)).
///
/// # Invariants
/// - Every table a slot of `root` names, and every table deposited on a slot, was allocated by
///   this value's `pte_alloc_one` and is owned by the slot: it is freed only after a grace
///   period of `rcu` once unlinked, or by `Drop`.
/// - `root` lives as long as the value and is never detached.
pub struct HeapPgtable {
    rcu: Qsbr,
    mm: RwSpinLock,
    root: PmdTable,
    stats: Arc<Stats>,
}

impl HeapPgtable {
    /// An empty address space: the root PMD table, all slots none.
    ///
    /// # Errors
    /// [`PgtableError::OutOfMemory`] if the root table cannot be allocated.
    pub fn new() -> Result<HeapPgtable, PgtableError> {
        let root = PmdTable::alloc().ok_or(PgtableError::OutOfMemory)?;
        // INVARIANT: no slot names a table yet.
        Ok(HeapPgtable {
            rcu: Qsbr::new(),
            mm: RwSpinLock::new(),
            root,
            stats: Arc::default(),
        })
    }

    /// The slot for `addr` (`pmd_offset` without a lock), or `None` outside [`HEAP_SPAN`].
    /// A bare slot proves nothing; [`HeapMm::pmd_offset`] tags it `InTable`.
    pub fn pmd_slot(&self, addr: u64) -> Option<&PmdSlot> {
        (addr < HEAP_SPAN).then(|| &self.root.page().slots[desc::pmd_index(addr)])
    }

    /// Takes the mm lock shared (`mmap_read_lock`): the walk lock of faults and retracts.
    pub fn mmap_read_lock(&self) -> HeapMm<'_> {
        HeapMm::new(self)
    }

    /// Takes the mm lock exclusively (`mmap_write_lock`): the walk lock of a remover that
    /// works by exclusivity (`free_pgtables`).
    pub fn mmap_write_lock(&self) -> HeapMmExclusive<'_> {
        HeapMmExclusive::new(self)
    }

    /// Copies the pmd for `addr` inside the open read section `guard` (the lockless walk of
    /// GUP-fast: no mm lock, the root table never goes away). `Ok(None)` outside the span.
    ///
    /// The provided walk of [`LocklessWalk`].
    ///
    /// # Errors
    /// [`PgtableError::WrongBackend`] if `guard` belongs to another domain.
    pub fn pmd_copy_lockless<'g>(
        &'g self,
        guard: &'g RcuGuard<'_, Qsbr>,
        addr: u64,
    ) -> Result<Option<PmdRef<'g, 'g, HeapPgtable, CopiedUnderRcu<'g>>>, PgtableError> {
        LocklessWalk::pmd_copy_lockless(self, guard, addr)
    }

    /// Installs a 2 MiB block for page frame `pfn` in the locked, empty slot (a THP fault).
    ///
    /// # Errors
    /// [`PgtableError::WrongBackend`] for another backend's lock,
    /// [`PgtableError::SlotOccupied`] if the slot is not none, [`PgtableError::Misaligned`] if
    /// `pfn` does not start a 2 MiB block.
    pub fn set_pmd_huge(
        &self,
        pml: &PmdLockGuard<'_, '_, HeapPgtable>,
        pfn: u64,
        prot: desc::Prot,
    ) -> Result<(), PgtableError> {
        let slot = self.locked_slot(pml)?;
        let block = desc::pfn_pmd(pfn, prot).ok_or(PgtableError::Misaligned {
            addr: pfn << desc::PAGE_SHIFT,
            align: 1 << desc::PMD_SHIFT,
        })?;
        if slot.load() != HeapPmd::NONE {
            return Err(PgtableError::SlotOccupied);
        }
        let value = HeapPmd::from_leaf_bits(block.bits()).ok_or(PgtableError::EntryRefused)?;
        slot.store(value);
        Ok(())
    }

    /// Clears a block from the locked slot and returns it (`pmdp_huge_get_and_clear`).
    ///
    /// # Errors
    /// [`PgtableError::WrongBackend`] for another backend's lock,
    /// [`PgtableError::TableInTheWay`] if the slot names a PTE table (which needs
    /// `pmdp_collapse_flush`), [`PgtableError::NotHuge`] otherwise.
    pub fn pmdp_huge_get_and_clear(
        &self,
        pml: &PmdLockGuard<'_, '_, HeapPgtable>,
    ) -> Result<desc::Pmd, PgtableError> {
        let slot = self.locked_slot(pml)?;
        let old = slot.load();
        if !desc::pmd_sect(old.desc()) {
            return Err(match old.table() {
                Ok(_) => PgtableError::TableInTheWay,
                Err(_) => PgtableError::NotHuge,
            });
        }
        // No PTE table is involved, so the PMD lock alone orders this against other writers.
        slot.store(HeapPmd::NONE);
        Ok(old.desc())
    }

    /// PTE tables allocated and not yet freed (installed, deposited, detached or waiting for
    /// their grace period).
    pub fn tables_live(&self) -> usize {
        self.stats.allocated.load(Ordering::Acquire) - self.stats.freed.load(Ordering::Acquire)
    }

    /// The slot a PMD lock guard of this backend holds.
    fn locked_slot<'s>(
        &self,
        pml: &PmdLockGuard<'_, 's, HeapPgtable>,
    ) -> Result<&'s PmdSlot, PgtableError> {
        if core::ptr::eq(pml.backend(), self) {
            Ok(pml.pmd().slot())
        } else {
            Err(PgtableError::WrongBackend)
        }
    }
}

impl Drop for HeapPgtable {
    fn drop(&mut self) {
        // `&mut self`: no walker, lock or map of ours is alive, so every table still linked
        // can be freed at once. Retired tables are freed by their callbacks when `rcu` drops.
        let page = self.root.page();
        for (slot, deposit) in page.slots.iter().zip(&page.deposits) {
            if let Ok(t) = slot.swap(HeapPmd::NONE).table() {
                // SAFETY: the slot owned the table (type invariant) and nobody can reach it.
                unsafe { self.free_now(t) };
            }
            if let Some(p) =
                core::ptr::NonNull::new(deposit.swap(core::ptr::null_mut(), Ordering::Acquire))
            {
                // SAFETY: a deposit link holds a handle's pointer; the slot owned the table.
                unsafe { self.free_now(PteTableRef::from_ptr(p)) };
            }
        }
    }
}

// `Sync` and `Send` follow from the fields (the root table and the tables it names are shared
// only through atomics and locks, see `PmdTable` and `PteTableRef`); `PgtableBackend` needs
// `Sync`, and this keeps it from being lost by accident.
const _: () = {
    const fn sync<T: Sync + Send>() {}
    sync::<HeapPgtable>();
};

impl fmt::Debug for HeapPgtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapPgtable")
            .field("tables_live", &self.tables_live())
            .field("rcu", &self.rcu)
            .finish_non_exhaustive()
    }
}
