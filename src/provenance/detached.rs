//! Detached PTE tables: linear values that must be populated, deposited or freed.

use super::backend::{MapKind, PgtableBackend};
use super::lock::PteLocked;
use super::map::PteMap;
use super::marker::{Attached, DetachState, Detached, Fresh, InTable, Retired};
use super::pmd::{PmdLockGuard, PmdRef};
use crate::error::{Error, NoMap, Rejected};
use crate::rcu::RcuDomain;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::Deref;

/// A PTE table owned by its holder, outside any slot (case 1).
///
/// Linear: the ways out are [`pmd_populate`](Self::pmd_populate) (install it in an empty slot),
/// [`pgtable_trans_huge_deposit`](DetachedPmd::pgtable_trans_huge_deposit) (park it on a huge
/// pmd, [`Fresh`] only), [`pte_free_defer`](Self::pte_free_defer) (free after a grace period)
/// and [`pte_free`](DetachedPmd::pte_free) ([`Fresh`] only: no walker ever saw it). There is
/// no safe immediate free of a [`Retired`] table, because lockless walkers that read the slot
/// before the unlink may still be inside it. Dropping one without consuming it falls back to
/// `pte_free_defer`, never to an immediate free.
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig, Pte};
/// use typed_pgtable::provenance::{pmd_lock, DetachedPmd};
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// let mm = mmu.mmap_read_lock();
/// let pmd = mm.pmd_alloc(0x60_0000)?;
/// let data = mmu.alloc_data_frame()?;
/// // Allocate, fill through an owned map, then publish under the PMD lock.
/// let mut table = DetachedPmd::pte_alloc_one(&mmu)?;
/// table.pte_offset_map_mut(0x60_0000).set_pte(0x60_0000, Pte::page(data));
/// let pml = pmd_lock(&pmd);
/// table.pmd_populate(&pml).map_err(|r| r.error)?;
/// drop(pml);
/// drop(mm);
/// assert_eq!(mmu.translate(0x60_0000)?, Some(data << 12));
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// # Invariants
/// The holder owns `table`: no slot names it, and nobody else will free it. If `S` is
/// [`Fresh`], no walker can hold a map of it either.
#[must_use = "a detached PTE table must be populated, deposited or freed (pte_free_defer)"]
pub struct DetachedPmd<'m, B: PgtableBackend, S: DetachState> {
    backend: &'m B,
    pmdval: B::PmdSnapshot,
    table: B::Table,
    _s: PhantomData<S>,
}

impl<'m, B: PgtableBackend, S: DetachState> DetachedPmd<'m, B, S> {
    /// Takes ownership of a table named by `pmdval`.
    ///
    /// # Safety
    /// The caller owns the table named by `pmdval`: no slot of `backend` names it and nobody
    /// else will free it. For `S = Fresh`, additionally no walker holds or can reach it.
    ///
    /// # Errors
    /// [`NoMap`] if `pmdval` names no table.
    pub unsafe fn from_pmd(backend: &'m B, pmdval: B::PmdSnapshot) -> Result<Self, NoMap> {
        let table = backend.pmd_table(&pmdval)?;
        // INVARIANT: the caller promises ownership.
        Ok(DetachedPmd {
            backend,
            pmdval,
            table,
            _s: PhantomData,
        })
    }

    /// Takes ownership of a table the backend's own allocator just handed out (crate-internal:
    /// the in-memory MMU's frame reservations use it, as `pte_alloc_one` does).
    pub(crate) fn from_table(backend: &'m B, table: B::Table) -> Self {
        DetachedPmd {
            backend,
            pmdval: backend.pmd_of_table(&table),
            table,
            _s: PhantomData,
        }
    }

    /// Gives up ownership without running `Drop`.
    fn into_table(self) -> B::Table {
        let me = ManuallyDrop::new(self);
        me.table
    }

    /// A `Detached` reference to the table, for `pte_offset_map` and `pte_offset_map_lock`.
    /// It borrows `self`, so the table cannot be consumed while the reference is in use.
    pub fn pmd(&self) -> PmdRef<'_, B, Detached> {
        PmdRef::from_parts(self.backend, self.pmdval)
    }

    /// The pmd value that names this table.
    pub fn pmd_val(&self) -> B::PmdSnapshot {
        self.pmdval
    }

    /// The table.
    pub fn table(&self) -> B::Table {
        self.table
    }

    /// Maps the table for lock-free writes: the holder owns it, so no PTE lock is needed
    /// (`pte_offset_map(&_pmd, haddr)` in `__split_huge_pmd_locked`).
    ///
    /// # Panics
    /// Only if the backend breaks its contract (item 4) by classifying the value that named
    /// this table as no table.
    pub fn pte_offset_map_mut(&mut self, addr: u64) -> PteMapMut<'_, B> {
        let pmd = PmdRef::<B, Detached>::from_parts(self.backend, self.pmdval);
        match PteMap::open(&pmd, addr, MapKind::Owned, false) {
            Ok(map) => PteMapMut { map },
            // The value was classified as a table when `self` was made and is never changed.
            Err(_) => unreachable!("a DetachedPmd always names a table"),
        }
    }

    /// Installs the table in the locked slot (`pmd_populate`), publishing every write made
    /// through [`pte_offset_map_mut`](Self::pte_offset_map_mut).
    ///
    /// # Errors
    /// Hands the table back with [`Error::SlotOccupied`] if the slot is not empty, or
    /// [`Error::WrongMmu`] if the lock belongs to another backend.
    pub fn pmd_populate(self, pml: &PmdLockGuard<'_, B>) -> Result<(), Rejected<Self>> {
        if !core::ptr::eq(self.backend, pml.backend()) {
            return Err(Rejected {
                error: Error::WrongMmu,
                value: self,
            });
        }
        if !matches!(self.backend.pmd_table(&pml.pmdp_get()), Err(NoMap::None)) {
            return Err(Rejected {
                error: Error::SlotOccupied,
                value: self,
            });
        }
        let slot = pml.pmd().slot();
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: `pml` holds the slot's PMD lock, the slot is none (checked under that lock),
        // and we owned `table` (type invariant) and give the ownership to the slot.
        unsafe { backend.pmd_populate(slot, &table) };
        Ok(())
    }

    /// Installs the table in the empty slot of `pmd`, whose PMD lock `pml` holds (`pml` may be
    /// the guard of another slot of the same PMD table: one PMD lock covers the whole table).
    ///
    /// # Errors
    /// Hands the table back with [`Error::WrongMmu`] if `pml` does not hold `pmd`'s lock, or
    /// [`Error::SlotOccupied`] if the slot is not empty.
    pub fn pmd_populate_at(
        self,
        pml: &PmdLockGuard<'_, B>,
        pmd: &PmdRef<'_, B, InTable>,
    ) -> Result<(), Rejected<Self>> {
        if !core::ptr::eq(self.backend, pml.backend())
            || !core::ptr::eq(self.backend, pmd.backend())
            || !self.backend.same_pmd_lock(pml.pmd().slot(), pmd.slot())
        {
            return Err(Rejected {
                error: Error::WrongMmu,
                value: self,
            });
        }
        if !matches!(self.backend.pmd_table(&pmd.pmd_val()), Err(NoMap::None)) {
            return Err(Rejected {
                error: Error::SlotOccupied,
                value: self,
            });
        }
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: `pml` holds the PMD lock that covers `pmd`'s slot (checked), the slot is none
        // (checked under that lock), and we owned the table and give it to the slot.
        unsafe { backend.pmd_populate(pmd.slot(), &table) };
        Ok(())
    }

    /// Frees the table after a grace period (`pte_free_defer`): walkers still inside it keep
    /// valid memory until their read sections end.
    pub fn pte_free_defer(self) {
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: we owned the table (type invariant) and no slot names it.
        unsafe { backend.pte_free_defer(&table) }
    }
}

impl<'m, B: PgtableBackend> DetachedPmd<'m, B, Retired> {
    /// Waits until no walker can still be inside the table, and returns it as [`Fresh`]
    /// (`tlb_remove_table_sync_one`, in this crate's RCU flavour: every walker maps a table
    /// inside an RCU read section, so one grace period after the unlink none is left, and none
    /// can find the table again). Needed before a retired table is reused (deposited) or freed
    /// at once. Blocks; must not be called inside a read section of the backend's domain.
    pub fn tlb_remove_table_sync_one(self) -> DetachedPmd<'m, B, Fresh> {
        self.backend.rcu().synchronize();
        let backend = self.backend;
        let pmdval = self.pmdval;
        let table = self.into_table();
        // INVARIANT: a grace period has passed since the unlink, so no walker holds the table.
        DetachedPmd {
            backend,
            pmdval,
            table,
            _s: PhantomData,
        }
    }
}

/// Proof that the holder has every slot it covers to itself: no walker other than the holder
/// can reach those slots through a walk lock (the `free_pgtables` exclusivity: mmap lock held
/// for writing, the range's VMAs write-locked and unlinked from the rmap, the range zapped).
///
/// # Safety
/// While a value of the implementing type is alive, no thread other than its holder takes a
/// walk lock that reaches a slot for which [`covers`](Self::covers) returns `true`, and no
/// other remover touches such a slot. Lockless (RCU) walkers may still read them.
pub unsafe trait ExclusiveAccess<B: PgtableBackend> {
    /// Whether this proof covers `slot`.
    fn covers(&self, slot: &B::PmdSlot) -> bool;
}

/// Clears a slot without the PTE lock under exclusive access (`pmd_clear` in
/// `free_pte_range`), and takes the table. Lockless walkers may still be inside it, so it is
/// [`Retired`]: free it with `pte_free_defer` (`tlb_remove_table`).
///
/// # Errors
/// [`Error::WrongMmu`] if the proof does not cover the slot (or it belongs to another
/// backend); [`Error::NoTable`] if the slot names no PTE table.
pub fn pmd_clear_exclusive<'a, B: PgtableBackend, E: ExclusiveAccess<B>>(
    excl: &E,
    pmd: &PmdRef<'a, B, InTable>,
) -> Result<DetachedPmd<'a, B, Retired>, Error> {
    if !excl.covers(pmd.slot()) {
        return Err(Error::WrongMmu);
    }
    let backend = pmd.backend;
    backend.pmd_table(&pmd.pmd_val())?;
    // SAFETY: `excl` proves exclusive access to the slot (nobody else changes it, so it still
    // names the table classified just above).
    let old = unsafe { backend.pmdp_collapse_flush(pmd.slot()) };
    let table = backend
        .pmd_table(&old)
        .map_err(|_| Error::NotMapped { addr: 0 })?;
    // INVARIANT: the slot no longer names the table, and only we took it out.
    Ok(DetachedPmd {
        backend,
        pmdval: old,
        table,
        _s: PhantomData,
    })
}

impl<'m, B: PgtableBackend> DetachedPmd<'m, B, Fresh> {
    /// Allocates a zeroed, unpublished table (`pte_alloc_one`).
    ///
    /// # Errors
    /// [`Error::OutOfFrames`] when the backend has no memory.
    pub fn pte_alloc_one(backend: &'m B) -> Result<Self, Error> {
        let table = backend.pte_alloc_one()?;
        // INVARIANT: a new table is owned and unreachable.
        Ok(DetachedPmd::from_table(backend, table))
    }

    /// Frees the table at once (`pte_free`): allowed only because no walker ever saw it.
    pub fn pte_free(self) {
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: `Fresh` means no walker holds or can reach the table, and we own it.
        unsafe { backend.pte_free(&table) }
    }

    /// Parks the table on the locked slot (`pgtable_trans_huge_deposit`).
    ///
    /// # Errors
    /// Hands the table back with [`Error::WrongMmu`] if the lock belongs to another backend.
    pub fn pgtable_trans_huge_deposit(
        self,
        pml: &PmdLockGuard<'_, B>,
    ) -> Result<(), Rejected<Self>> {
        if !core::ptr::eq(self.backend, pml.backend()) {
            return Err(Rejected {
                error: Error::WrongMmu,
                value: self,
            });
        }
        let slot = pml.pmd().slot();
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: `pml` holds the slot's PMD lock; the table is owned and unreachable (`Fresh`).
        unsafe { backend.pgtable_trans_huge_deposit(slot, &table) };
        Ok(())
    }

    /// Takes the table deposited on the locked slot, if any (`pgtable_trans_huge_withdraw`).
    pub fn pgtable_trans_huge_withdraw(pml: &PmdLockGuard<'m, B>) -> Option<Self> {
        let backend = pml.backend();
        // SAFETY: `pml` holds the slot's PMD lock.
        let table = unsafe { backend.pgtable_trans_huge_withdraw(pml.pmd().slot()) }?;
        // INVARIANT: a withdrawn table was parked, unreachable by walkers, and is now ours.
        Some(DetachedPmd::from_table(backend, table))
    }
}

/// Clears a slot that names a PTE table and takes the table (`pmdp_collapse_flush`).
///
/// Needs the slot's PMD lock *and* the table's PTE lock in the [`Attached`] state, which is
/// what excludes `pte_offset_map_lock` users: they either hold the PTE lock first (and this
/// waits), or take it later and fail their `pmd_same` recheck. The PTE lock is released on
/// return. Lockless walkers may still be inside the table, so the result is [`Retired`].
///
/// # Errors
/// Hands the lock back if it belongs to another backend ([`Error::WrongMmu`]) or maps another
/// table than the one in the slot ([`Error::PmdChanged`]).
///
/// # Panics
/// Only if the backend breaks its contract (items 2 and 4): the slot changed under both locks,
/// or a value that named a table is classified as none.
pub fn pmdp_collapse_flush<'a, 't, B: PgtableBackend>(
    pml: &PmdLockGuard<'a, B>,
    ptl: PteLocked<'t, B, Attached>,
) -> Result<DetachedPmd<'a, B, Retired>, Rejected<PteLocked<'t, B, Attached>>> {
    let backend = pml.backend();
    if !core::ptr::eq(backend, ptl.backend()) {
        return Err(Rejected {
            error: Error::WrongMmu,
            value: ptl,
        });
    }
    if !backend.pmd_same(&pml.pmdp_get(), &ptl.pmdval()) {
        return Err(Rejected {
            error: Error::PmdChanged,
            value: ptl,
        });
    }
    let slot = pml.pmd().slot();
    // SAFETY: we hold the slot's PMD lock (`pml`) and the PTE lock of the table it names
    // (`ptl`, checked with pmd_same under the PMD lock just above).
    let old = unsafe { backend.pmdp_collapse_flush(slot) };
    drop(ptl);
    let table = match backend.pmd_table(&old) {
        Ok(t) => t,
        Err(_) => unreachable!("the slot named a table under both locks"),
    };
    // INVARIANT: the slot no longer names the table, and only we took it out.
    Ok(DetachedPmd {
        backend,
        pmdval: old,
        table,
        _s: PhantomData,
    })
}

impl<B: PgtableBackend, S: DetachState> Drop for DetachedPmd<'_, B, S> {
    fn drop(&mut self) {
        // SAFETY: we own the table (type invariant) and no slot names it; a deferred free is
        // safe whatever walkers may still hold.
        unsafe { self.backend.pte_free_defer(&self.table) }
    }
}

impl<B: PgtableBackend, S: DetachState> fmt::Debug for DetachedPmd<'_, B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedPmd")
            .field("state", &core::any::type_name::<S>())
            .field("pmdval", &self.pmdval)
            .finish()
    }
}

/// A writable map of a table its holder owns (from [`DetachedPmd::pte_offset_map_mut`]).
/// Writes need no lock: no one else can reach the table.
#[must_use = "dropping a PTE map unmaps it at once"]
pub struct PteMapMut<'o, B: PgtableBackend> {
    map: PteMap<'o, B>,
}

impl<B: PgtableBackend> PteMapMut<'_, B> {
    /// Writes the PTE for `addr`.
    pub fn set_pte(&self, addr: u64, pte: B::Pte) {
        self.map.set_index(self.map.backend.pte_index(addr), pte)
    }

    /// Writes the PTE at `index` (modulo the table size).
    pub fn set_pte_index(&self, index: usize, pte: B::Pte) {
        self.map.set_index(index, pte)
    }

    /// Clears the PTE for `addr` and returns the old value.
    pub fn ptep_get_and_clear(&self, addr: u64) -> B::Pte {
        self.map.clear_index(self.map.backend.pte_index(addr))
    }
}

impl<'o, B: PgtableBackend> Deref for PteMapMut<'o, B> {
    type Target = PteMap<'o, B>;
    fn deref(&self) -> &PteMap<'o, B> {
        &self.map
    }
}

impl<B: PgtableBackend> fmt::Debug for PteMapMut<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PteMapMut").field(&self.map).finish()
    }
}
