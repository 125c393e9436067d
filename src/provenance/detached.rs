//! Detached PTE tables: linear values that must be populated, deposited or freed.

use super::backend::{MapKind, PgtableBackend};
use super::error::PgtableError;
use super::lock::PteLocked;
use super::map::PteMap;
use super::marker::{Attached, DetachState, Detached, Fresh, InTable, Retired, fmt_marked};
use super::pmd::{PmdLockGuard, PmdRef};
use super::walk::InstallLock;
use crate::error::{NoMap, Rejected};
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
/// // Allocate, fill through an owned map, then publish under the PMD lock (and the mmap lock,
/// // which allows installing: rule I7).
/// let mut table = DetachedPmd::pte_alloc_one(&mmu)?;
/// table.pte_offset_map_mut(0x60_0000).set_pte(0x60_0000, Pte::page(data.pfn()))?;
/// let pml = pmd_lock(&pmd);
/// table.pmd_populate(&mm, &pml).map_err(|r| r.error)?;
/// drop(pml);
/// drop(mm);
/// assert_eq!(mmu.translate(0x60_0000)?, Some(data.pfn() << 12));
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
    pub fn pmd(&self) -> PmdRef<'m, '_, B, Detached> {
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
    pub fn pte_offset_map_mut(&mut self, addr: u64) -> PteMapMut<'_, B> {
        // SAFETY: we own the table (type invariant), so it stays alive while the map borrows
        // `self` mutably.
        let map = unsafe {
            PteMap::from_table(
                self.backend,
                self.table,
                self.pmdval,
                addr,
                MapKind::Owned,
                None,
            )
        };
        PteMapMut { map }
    }

    /// Installs the table in the locked slot (`pmd_populate(mm, pmd, pte)`), publishing every
    /// write made through [`pte_offset_map_mut`](Self::pte_offset_map_mut).
    ///
    /// `mm` is the walk lock that allows installing here (rule I7: the mmap lock or a VMA lock
    /// covering the slot; the rmap lock alone does not compile), `pml` the slot's PMD lock.
    ///
    /// # Errors
    /// Hands the table back with [`PgtableError::SlotOccupied`] if the slot is not empty,
    /// [`PgtableError::WrongBackend`] if the lock belongs to another backend, or
    /// [`PgtableError::SlotNotCovered`] if `mm` does not cover the slot.
    pub fn pmd_populate<L: InstallLock<B>>(
        self,
        mm: &L,
        pml: &PmdLockGuard<'_, '_, B>,
    ) -> Result<(), Rejected<Self, B::Error>> {
        let this = self.same_backend(pml.backend())?;
        if let Err(error) = mm.allows_install(this.backend, pml.pmd().slot()) {
            return Err(Rejected { error, value: this });
        }
        this.populate_locked(&pml.pmd())
    }

    /// `self`, or `self` handed back with [`PgtableError::WrongBackend`] if `other` is another backend.
    fn same_backend(self, other: &B) -> Result<Self, Rejected<Self, B::Error>> {
        if core::ptr::eq(self.backend, other) {
            Ok(self)
        } else {
            Err(Rejected {
                error: PgtableError::WrongBackend.into(),
                value: self,
            })
        }
    }

    /// The end of every populate: the slot's PMD lock is held (by the caller's guard, of the
    /// same backend). Checks the slot is none, then installs.
    fn populate_locked(
        self,
        pmd: &PmdRef<'_, '_, B, InTable>,
    ) -> Result<(), Rejected<Self, B::Error>> {
        if !matches!(self.backend.pmd_table(&pmd.pmd_val()), Err(NoMap::None)) {
            return Err(Rejected {
                error: PgtableError::SlotOccupied.into(),
                value: self,
            });
        }
        let backend = self.backend;
        let table = self.into_table();
        // SAFETY: the caller holds the PMD lock covering the slot (checked by each caller), the
        // slot is none (checked under that lock), and we owned `table` (type invariant) and
        // give the ownership to the slot.
        unsafe { backend.pmd_populate(pmd.slot(), &table) };
        Ok(())
    }

    /// Installs the table in place of a huge pmd that a split of the caller's invalidated and
    /// cleared under `pml` (`__split_huge_pmd_locked`). Crate-internal: a split runs under any
    /// walk lock (the kernel splits under the rmap lock too), so it is not an I7 install.
    #[cfg(feature = "std")]
    pub(crate) fn pmd_populate_split(
        self,
        pml: &PmdLockGuard<'_, '_, B>,
    ) -> Result<(), Rejected<Self, B::Error>> {
        let this = self.same_backend(pml.backend())?;
        this.populate_locked(&pml.pmd())
    }

    /// Installs the table in the empty slot of `pmd`, whose PMD lock `pml` holds (`pml` may be
    /// the guard of another slot of the same PMD table: one PMD lock covers the whole table).
    /// `mm` allows installing there, as for [`pmd_populate`](Self::pmd_populate).
    ///
    /// # Errors
    /// Hands the table back with [`PgtableError::WrongBackend`] if the locks or `pmd` belong to another
    /// backend, [`PgtableError::SlotNotCovered`] if `pml` does not hold `pmd`'s lock or `mm` does not
    /// cover the slot, or [`PgtableError::SlotOccupied`] if the slot is not empty.
    pub fn pmd_populate_at<L: InstallLock<B>>(
        self,
        mm: &L,
        pml: &PmdLockGuard<'_, '_, B>,
        pmd: &PmdRef<'_, '_, B, InTable>,
    ) -> Result<(), Rejected<Self, B::Error>> {
        if !core::ptr::eq(self.backend, pml.backend())
            || !core::ptr::eq(self.backend, pmd.backend())
        {
            return Err(Rejected {
                error: PgtableError::WrongBackend.into(),
                value: self,
            });
        }
        // SAFETY: both slots are the backend's (`InTable` invariant; backends compared above).
        if !unsafe { self.backend.same_pmd_lock(pml.pmd().slot(), pmd.slot()) } {
            return Err(Rejected {
                error: PgtableError::SlotNotCovered.into(),
                value: self,
            });
        }
        if let Err(error) = mm.allows_install(self.backend, pmd.slot()) {
            return Err(Rejected { error, value: self });
        }
        self.populate_locked(pmd)
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
/// [`pmd_clear_exclusive`] takes the proof by `&mut`, and walks of the holder's own
/// (`pmd_offset` of the token) borrow it shared: so no `InTable` reference, map or
/// [`Attached`] lock of a covered slot is alive while a slot is cleared.
///
/// # Safety
/// While a value of the implementing type is alive, no thread takes a walk lock that reaches
/// a slot [`covered_slot`](Self::covered_slot) returns, other than through shared borrows of
/// this value on the holder's thread; no other remover touches such a slot; and the value is
/// neither `Send` nor `Sync`. Lockless (RCU) walkers may still read the slots.
pub unsafe trait ExclusiveAccess<'m, B: PgtableBackend> {
    /// The backend whose slots this proof covers.
    fn backend(&self) -> &'m B;

    /// The slot for `addr`, if this proof covers it (and the upper levels exist): one of
    /// [`backend`](Self::backend)'s slots, in a PMD table that stays alive while `self` is
    /// borrowed.
    ///
    /// # Errors
    /// Why the proof does not cover `addr` (the in-memory MMU:
    /// [`Error::OutsideVma`](crate::Error::OutsideVma)).
    fn covered_slot(&self, addr: u64) -> Result<Option<&B::PmdSlot>, B::Error>;
}

/// A PTE lock handed back by a refused [`pmdp_collapse_flush`], with the backend's error.
type LockHandedBack<'t, B> = Rejected<PteLocked<'t, B, Attached>, <B as PgtableBackend>::Error>;

/// Clears the slot for `addr` without the PTE lock under exclusive access (`pmd_clear` in
/// `free_pte_range`), and takes the table. Lockless walkers may still be inside it, so it is
/// [`Retired`]: free it with `pte_free_defer` (`tlb_remove_table`).
///
/// # Errors
/// The proof's error if it does not cover `addr`; [`PgtableError::NoSlot`] if the upper levels
/// do not exist; [`PgtableError::NoTable`] if the slot names no PTE table.
pub fn pmd_clear_exclusive<'m, B: PgtableBackend, E: ExclusiveAccess<'m, B>>(
    excl: &mut E,
    addr: u64,
) -> Result<DetachedPmd<'m, B, Retired>, B::Error> {
    let backend = excl.backend();
    let slot = excl
        .covered_slot(addr)?
        .ok_or(PgtableError::NoSlot { addr })?;
    backend
        .pmd_table(&backend.pmdp_get_lockless(slot))
        .map_err(PgtableError::NoTable)?;
    // SAFETY: `excl` proves exclusive access to the slot, and no reference of the holder's
    // own into it is alive (we hold `excl` mutably): nobody else changes the slot, so it still
    // names the table classified just above.
    let old = unsafe { backend.pmdp_collapse_flush(slot) };
    // Only a backend that breaks its contract (item 4) classifies the value differently now.
    let table = backend.pmd_table(&old).map_err(PgtableError::NoTable)?;
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
    /// [`PgtableError::OutOfMemory`] when the backend has no memory.
    pub fn pte_alloc_one(backend: &'m B) -> Result<Self, B::Error> {
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

    /// Parks the table on the locked slot, which holds a huge pmd (or a huge migration entry)
    /// with no deposit yet (`pgtable_trans_huge_deposit`): the table a later split fills.
    ///
    /// # Errors
    /// Hands the table back with [`PgtableError::WrongBackend`] if the lock belongs to another backend,
    /// [`PgtableError::TableInTheWay`] if the slot names a PTE table (the deposit would be stranded),
    /// [`PgtableError::NotHuge`] if it holds no huge entry, or [`PgtableError::SlotOccupied`] if a table
    /// is already deposited there.
    pub fn pgtable_trans_huge_deposit(
        self,
        pml: &PmdLockGuard<'_, '_, B>,
    ) -> Result<(), Rejected<Self, B::Error>> {
        let this = self.same_backend(pml.backend())?;
        match this.backend.pmd_table(&pml.pmdp_get()) {
            Err(NoMap::Huge | NoMap::Migration) => {}
            Ok(_) => {
                return Err(Rejected {
                    error: PgtableError::TableInTheWay.into(),
                    value: this,
                });
            }
            Err(_) => {
                return Err(Rejected {
                    error: PgtableError::NotHuge.into(),
                    value: this,
                });
            }
        }
        let slot = pml.pmd().slot();
        // SAFETY: `pml` holds the slot's PMD lock; the table is owned and unreachable (`Fresh`).
        if unsafe { !this.backend.pgtable_trans_huge_deposit(slot, &this.table) } {
            return Err(Rejected {
                error: PgtableError::SlotOccupied.into(),
                value: this,
            });
        }
        // The slot owns the table now.
        let _ = this.into_table();
        Ok(())
    }

    /// Takes the table deposited on the locked slot, if any (`pgtable_trans_huge_withdraw`).
    /// The table is owned for the backend's lifetime `'m`, not the lock's.
    pub fn pgtable_trans_huge_withdraw(pml: &PmdLockGuard<'m, '_, B>) -> Option<Self> {
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
/// Hands the lock back if it belongs to another backend ([`PgtableError::WrongBackend`]) or maps another
/// table than the one in the slot ([`PgtableError::PmdChanged`]).
///
pub fn pmdp_collapse_flush<'m, 't, B: PgtableBackend>(
    pml: &PmdLockGuard<'m, '_, B>,
    ptl: PteLocked<'t, B, Attached>,
) -> Result<DetachedPmd<'m, B, Retired>, LockHandedBack<'t, B>> {
    let backend = pml.backend();
    if !core::ptr::eq(backend, ptl.backend()) {
        return Err(Rejected {
            error: PgtableError::WrongBackend.into(),
            value: ptl,
        });
    }
    if !backend.pmd_same(&pml.pmdp_get(), &ptl.pmdval()) {
        return Err(Rejected {
            error: PgtableError::PmdChanged.into(),
            value: ptl,
        });
    }
    let slot = pml.pmd().slot();
    // The table is the one `ptl` locks: the slot named it under both locks (pmd_same above).
    let table = ptl.table();
    // SAFETY: we hold the slot's PMD lock (`pml`) and the PTE lock of the table it names
    // (`ptl`, checked with pmd_same under the PMD lock just above).
    let old = unsafe { backend.pmdp_collapse_flush(slot) };
    drop(ptl);
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
        fmt_marked::<S>(f, "DetachedPmd", "state", "pmdval", &self.pmdval)
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
    ///
    /// # Errors
    /// The backend's refusal of `pte`; nothing is written then.
    pub fn set_pte(&self, addr: u64, pte: B::Pte) -> Result<(), B::Error> {
        self.map.set_index(self.map.backend.pte_index(addr), pte)
    }

    /// Writes the PTE at `index` (modulo the table size).
    ///
    /// # Errors
    /// As [`set_pte`](Self::set_pte).
    pub fn set_pte_index(&self, index: usize, pte: B::Pte) -> Result<(), B::Error> {
        self.map.set_index(index, pte)
    }

    /// Clears the PTE for `addr` and returns the old value.
    pub fn ptep_get_and_clear(&self, addr: u64) -> B::Pte {
        self.map.clear_index(self.map.backend.pte_index(addr))
    }

    /// Clears the PTE at `index` (modulo the table size) and returns the old value.
    pub fn ptep_get_and_clear_index(&self, index: usize) -> B::Pte {
        self.map.clear_index(index)
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
