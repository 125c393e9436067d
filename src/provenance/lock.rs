//! Locked PTE maps: `pte_offset_map_lock`, `pte_offset_map_ro_nolock`,
//! `pte_offset_map_rw_nolock`, and the access states they return.

use super::backend::{MapKind, PgtableBackend};
use super::error::PgtableError;
use super::map::PteMap;
use super::marker::{
    Access, Attached, CanWrite, InTable, ProvesProtection, ReadOnly, Unverified, fmt_marked,
};
use super::pmd::PmdRef;
use crate::error::{NoMap, Rejected};
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::Deref;

/// A mapped PTE table with its PTE lock held, in access state `A`.
///
/// | `A` | from | writes |
/// |---|---|---|
/// | [`Attached`] | `pte_offset_map_lock` on an `InTable` pmd; `revalidate` | yes |
/// | [`Owned`](super::Owned) | `pte_offset_map_lock` on a `Detached` pmd | yes |
/// | [`Unverified`] | `PteRwNolock::lock`; `pte_offset_map_lock` on a copied pmd | no, until `revalidate` |
/// | [`ReadOnly`] | `PteRoNolock::lock` | never |
///
/// Derefs to [`PteMap`] for reads. Dropping it unlocks and unmaps (`pte_unmap_unlock`).
///
/// # Invariants
/// This thread holds the PTE lock of `map.table`. If `A` is `Attached`, the pmd slot was seen
/// naming `map.table` under that lock, so the table stays installed until the lock is dropped.
#[must_use = "dropping a locked PTE map unlocks it at once"]
pub struct PteLocked<'a, B: PgtableBackend, A: Access> {
    map: PteMap<'a, B>,
    _a: PhantomData<A>,
}

impl<'a, B: PgtableBackend, A: Access> PteLocked<'a, B, A> {
    /// Takes the lock of `map`'s table.
    #[track_caller]
    fn lock(map: PteMap<'a, B>) -> Self {
        // SAFETY: the table is protected while `map` lives (PteMap invariant), and the lock
        // lives as long as the table (backend contract, item 1).
        unsafe { map.backend.pte_lock(&map.table) };
        // INVARIANT: the lock was just taken; the caller establishes `A`'s extra promise.
        PteLocked {
            map,
            _a: PhantomData,
        }
    }

    /// Changes the state without unlocking.
    fn into_state<A2: Access>(self) -> PteLocked<'a, B, A2> {
        let me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the map is moved out exactly once and the lock
        // passes, still held, to the new value.
        let map = unsafe { core::ptr::read(&me.map) };
        PteLocked {
            map,
            _a: PhantomData,
        }
    }

    /// Writes the PTE for `addr` (`set_pte_at`). Only in a writing state.
    ///
    /// # Errors
    /// The backend's refusal of `pte` (the in-memory MMU: [`Error::NotADataPage`](crate::Error::NotADataPage)); nothing
    /// is written then.
    pub fn set_pte(&self, addr: u64, pte: B::Pte) -> Result<(), B::Error>
    where
        A: CanWrite,
    {
        self.map.set_index(self.map.backend.pte_index(addr), pte)
    }

    /// Clears the PTE for `addr` and returns the old value (`ptep_get_and_clear`). Only in a
    /// writing state.
    pub fn ptep_get_and_clear(&self, addr: u64) -> B::Pte
    where
        A: CanWrite,
    {
        self.map.clear_index(self.map.backend.pte_index(addr))
    }

    /// Writes the PTE at `index` (modulo the table size). Only in a writing state.
    ///
    /// # Errors
    /// As [`set_pte`](Self::set_pte).
    pub fn set_pte_index(&self, index: usize, pte: B::Pte) -> Result<(), B::Error>
    where
        A: CanWrite,
    {
        self.map.set_index(index, pte)
    }
}

impl<'a, B: PgtableBackend> PteLocked<'a, B, Unverified> {
    /// Proves the locked table is still installed in `pmd`'s slot (`pmd_same` under the PTE
    /// lock) and returns the writable state.
    ///
    /// # Errors
    /// Hands the lock back with [`PgtableError::PmdChanged`] if the slot no longer holds the mapped
    /// value (the table was removed or replaced; unlock and retry), or [`PgtableError::WrongBackend`] if
    /// `pmd` belongs to another backend.
    ///
    /// The `Attached` lock lives no longer than `pmd`'s walk lock: attachment is proven only
    /// while the walk lock keeps removers that work by exclusivity (`free_pgtables`) away.
    pub fn revalidate<'b>(
        self,
        pmd: &PmdRef<'_, 'b, B, InTable>,
    ) -> Result<PteLocked<'b, B, Attached>, Rejected<Self, B::Error>>
    where
        'a: 'b,
    {
        if !core::ptr::eq(self.map.backend, pmd.backend) {
            return Err(Rejected {
                error: PgtableError::WrongBackend.into(),
                value: self,
            });
        }
        let now = self.map.backend.pmdp_get_lockless(pmd.slot());
        if self.map.backend.pmd_same(&self.map.pmdval, &now) {
            // INVARIANT: under the lock, the slot names the mapped table.
            Ok(self.into_state())
        } else {
            Err(Rejected {
                error: PgtableError::PmdChanged.into(),
                value: self,
            })
        }
    }
}

impl<'a, B: PgtableBackend, A: Access> Deref for PteLocked<'a, B, A> {
    type Target = PteMap<'a, B>;
    fn deref(&self) -> &PteMap<'a, B> {
        &self.map
    }
}

impl<B: PgtableBackend, A: Access> Drop for PteLocked<'_, B, A> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this thread holds the lock; the map (and its RCU
        // section) is dropped after this, so the lock is still valid here.
        unsafe { self.map.backend.pte_unlock(&self.map.table) }
    }
}

impl<B: PgtableBackend, A: Access> fmt::Debug for PteLocked<'_, B, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_marked::<A>(f, "PteLocked", "access", "map", &self.map)
    }
}

/// Maps and locks the PTE table behind a protected pmd (`pte_offset_map_lock`).
///
/// For an `InTable` pmd this is the kernel loop: map the snapshot, lock the table's PTE lock,
/// recheck the slot with `pmd_same`, and retry if it changed; the result is [`Attached`] and
/// can write. For a copied pmd the recheck would compare the copy with itself, so the result
/// is [`Unverified`] and cannot write until [`revalidate`](PteLocked::revalidate)d against a
/// real slot. For a detached pmd the result is [`Owned`](super::Owned).
///
/// # Errors
/// A [`NoMap`] when there is no table (any more) behind the pmd.
///
/// The lock an `InTable` pmd gives can write at once; the one a lockless copy gives must be
/// revalidated against the slot first:
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{LocklessWalk, PgtableBackend, pte_offset_map_lock};
/// use typed_pgtable::rcu::RcuDomain;
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// let pfn = mmu.map_page(0x1000)?;
/// let mm = mmu.mmap_read_lock();
/// let in_table = mm.pmd_offset(0x1000)?.unwrap();
/// let attached = pte_offset_map_lock(&in_table, 0x1000).unwrap();
/// attached.set_pte(0x1000, attached.ptep_get(0x1000).mkold())?;
/// drop(attached);
///
/// let guard = mmu.rcu().read_lock();
/// let copy = mmu.pmd_copy_lockless(&guard, 0x1000)?.unwrap();
/// let unverified = pte_offset_map_lock(&copy, 0x1000).unwrap();
/// assert_eq!(unverified.ptep_get(0x1000).pfn(), Some(pfn));
/// let attached = unverified.revalidate(&in_table).map_err(|r| r.error)?;
/// assert!(!attached.ptep_get_and_clear(0x1000).is_young());
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
#[track_caller]
pub fn pte_offset_map_lock<'a, B, P>(
    pmd: &PmdRef<'_, 'a, B, P>,
    addr: u64,
) -> Result<PteLocked<'a, B, P::LockAccess>, NoMap>
where
    B: PgtableBackend,
    P: ProvesProtection,
{
    loop {
        let map = PteMap::open(pmd, addr, P::LOCK_KIND, true)?;
        let locked = PteLocked::<B, P::LockAccess>::lock(map);
        match P::recheck_slot(&pmd.src) {
            None => return Ok(locked),
            Some(slot) => {
                let now = pmd.backend.pmdp_get_lockless(slot);
                if pmd.backend.pmd_same(&locked.map.pmdval, &now) {
                    // INVARIANT: for `InTable` (`Attached`) the slot names the locked table.
                    return Ok(locked);
                }
                // The table was removed or replaced between the read and the lock: unlock,
                // unmap, and go again.
                drop(locked);
                core::hint::spin_loop();
            }
        }
    }
}

/// Unlocks and unmaps (`pte_unmap_unlock`); the same as dropping the lock.
pub fn pte_unmap_unlock<B: PgtableBackend, A: Access>(pte: PteLocked<'_, B, A>) {
    drop(pte)
}

/// A map from `pte_offset_map_ro_nolock` or `pte_offset_map_rw_nolock`: the table mapped, its
/// lock not taken. Read it locklessly, or [`lock`](Self::lock) it for reads that are stable
/// against writers; the lock comes in access state `A`:
///
/// | alias | `A` | writes after `lock` |
/// |---|---|---|
/// | [`PteRoNolock`] | [`ReadOnly`] | never |
/// | [`PteRwNolock`] | [`Unverified`] | after [`PteLocked::revalidate`] |
///
/// # Invariants
/// `A` is [`ReadOnly`] or [`Unverified`]: only the two constructors below make a value, and
/// neither state lets the lock write before a `pmd_same` recheck.
#[must_use = "dropping a PTE map unmaps it at once"]
pub struct PteNolock<'a, B: PgtableBackend, A: Access> {
    map: PteMap<'a, B>,
    _a: PhantomData<A>,
}

/// A map from `pte_offset_map_ro_nolock`; its lock is [`ReadOnly`], never writable.
pub type PteRoNolock<'a, B> = PteNolock<'a, B, ReadOnly>;

/// A map from `pte_offset_map_rw_nolock`, with the pmd snapshot it was made from
/// ([`PteMap::pmdval`]). Locking it gives an [`Unverified`] lock that can write only after
/// [`PteLocked::revalidate`].
pub type PteRwNolock<'a, B> = PteNolock<'a, B, Unverified>;

impl<'a, B: PgtableBackend, A: Access> PteNolock<'a, B, A> {
    /// Maps the table behind `pmd` without taking its lock.
    #[track_caller]
    fn open(pmd: &PmdRef<'_, 'a, B, InTable>, addr: u64, kind: MapKind) -> Result<Self, NoMap> {
        Ok(PteNolock {
            map: PteMap::open(pmd, addr, kind, true)?,
            _a: PhantomData,
        })
    }

    /// Takes the table's lock (`spin_lock(ptl)`). The table may already be detached; the lock
    /// gives exclusion against its writers, not attachment: a [`ReadOnly`] lock never writes,
    /// an [`Unverified`] one writes after a `revalidate`.
    #[track_caller]
    pub fn lock(self) -> PteLocked<'a, B, A> {
        PteLocked::lock(self.map)
    }
}

impl<'a, B: PgtableBackend, A: Access> Deref for PteNolock<'a, B, A> {
    type Target = PteMap<'a, B>;
    fn deref(&self) -> &PteMap<'a, B> {
        &self.map
    }
}

impl<B: PgtableBackend, A: Access> fmt::Debug for PteNolock<'_, B, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_marked::<A>(f, "PteNolock", "access", "map", &self.map)
    }
}

/// Maps the table of an in-table pmd and hands back its lock unlocked, for reading only
/// (`pte_offset_map_ro_nolock`).
///
/// # Errors
/// A [`NoMap`] when there is no table behind the pmd.
#[track_caller]
pub fn pte_offset_map_ro_nolock<'a, B: PgtableBackend>(
    pmd: &PmdRef<'_, 'a, B, InTable>,
    addr: u64,
) -> Result<PteRoNolock<'a, B>, NoMap> {
    PteNolock::open(pmd, addr, MapKind::RoNolock)
}

/// Maps the table of an in-table pmd, returns its lock unlocked and the pmd snapshot
/// ([`PteMap::pmdval`]), for callers that will write after revalidating
/// (`pte_offset_map_rw_nolock`).
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::pte_offset_map_rw_nolock;
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// mmu.map_page(0x3000)?;
/// let mm = mmu.mmap_read_lock();
/// let pmd = mm.pmd_offset(0x3000)?.unwrap();
/// let unverified = pte_offset_map_rw_nolock(&pmd, 0x3000).unwrap().lock();
/// let attached = unverified.revalidate(&pmd).map_err(|r| r.error)?;
/// let old = attached.ptep_get_and_clear(0x3000);
/// assert!(old.is_present());
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// # Errors
/// A [`NoMap`] when there is no table behind the pmd.
#[track_caller]
pub fn pte_offset_map_rw_nolock<'a, B: PgtableBackend>(
    pmd: &PmdRef<'_, 'a, B, InTable>,
    addr: u64,
) -> Result<PteRwNolock<'a, B>, NoMap> {
    PteNolock::open(pmd, addr, MapKind::RwNolock)
}
