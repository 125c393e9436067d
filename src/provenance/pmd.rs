//! Pmd references tagged with their provenance, the lockless copy, and the PMD lock.

use super::backend::PgtableBackend;
use super::error::PgtableError;
use super::marker::{CopiedSource, CopiedUnderRcu, InTable, Provenance, Unprotected, fmt_marked};
use crate::bound::SpinBound;
use crate::rcu::RcuGuard;
use core::fmt;
use core::marker::PhantomData;

/// A reference to a pmd, tagged with how it is protected.
///
/// Two lifetimes: `'m` is the backend's (the MMU's), `'a` the proof's (the walk lock borrowed
/// for `InTable`, the read section for `CopiedUnderRcu<'a>`, the owner borrowed for
/// `Detached`). Maps and locks made from the reference live at most `'a`; a table detached
/// through it ([`pmdp_collapse_flush`](super::pmdp_collapse_flush),
/// [`pgtable_trans_huge_withdraw`](super::DetachedPmd::pgtable_trans_huge_withdraw)) is owned
/// for `'m`, so it can outlive the locks it was detached under, as in the kernel, which drops
/// them before it frees the table.
///
/// | `P` | stores | size (64-bit, in-memory MMU) | made by |
/// |---|---|---|---|
/// | [`InTable`] | backend pointer + slot pointer | 16 bytes | a walk under a walk-lock token |
/// | [`CopiedUnderRcu<'g>`] | backend pointer + value + source slot pointer | 32 bytes | [`pmdp_get_lockless`], a lockless walk |
/// | [`Detached`](super::Detached) | backend pointer + value | 24 bytes | [`DetachedPmd::pmd`](super::DetachedPmd::pmd) |
/// | [`Unprotected`] | backend pointer + value | 24 bytes | [`PmdRef::unprotected`] |
///
/// The backend pointer is what lets `pte_offset_map` turn the value into a table; the in-memory
/// MMU's value carries the raw entry and the generation of the table it names (for the audit).
/// The sizes are checked at compile time in `mmu::backend`.
///
/// # Invariants
///
/// For `InTable`, the slot is one of `backend`'s and lives in a PMD table that stays
/// attached and alive for `'a`. For `CopiedUnderRcu<'g>`, the value was read from one of
/// `backend`'s slots inside a read section of the backend's RCU domain that lasts for `'g`
/// (and `'a` is no longer than `'g`). For `Detached`, the value names a table owned by the
/// `DetachedPmd` borrowed for `'a`. Always `'m: 'a`.
pub struct PmdRef<'m, 'a, B: PgtableBackend, P: Provenance> {
    pub(crate) backend: &'m B,
    pub(crate) src: P::Source<'a, B>,
    _p: PhantomData<(P, &'a &'m ())>,
}

impl<B: PgtableBackend, P: Provenance> Clone for PmdRef<'_, '_, B, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: PgtableBackend, P: Provenance> Copy for PmdRef<'_, '_, B, P> {}

impl<'m, 'a, B: PgtableBackend, P: Provenance> PmdRef<'m, 'a, B, P> {
    pub(crate) fn from_parts(backend: &'m B, src: P::Source<'a, B>) -> Self {
        PmdRef {
            backend,
            src,
            _p: PhantomData,
        }
    }

    /// The backend this pmd belongs to.
    pub fn backend(&self) -> &'m B {
        self.backend
    }

    /// The pmd value (`pmdp_get`): a fresh read of the slot for `InTable`, the stored value
    /// otherwise. Reading a value is always safe; mapping the table it names is what needs a
    /// proof.
    pub fn pmd_val(&self) -> B::PmdSnapshot {
        P::read(self.backend, &self.src)
    }

    /// The same value without its proof (for printing or comparison).
    pub fn forget_protection(&self) -> PmdRef<'m, 'a, B, Unprotected> {
        PmdRef::from_parts(self.backend, self.pmd_val())
    }
}

impl<'m, 'a, B: PgtableBackend> PmdRef<'m, 'a, B, InTable> {
    /// Tags a slot as `InTable`.
    ///
    /// # Safety
    /// `slot` is one of `backend`'s and lies in a PMD table that stays attached to the tree and
    /// alive for `'a`: the caller holds a walk lock (mmap, VMA or rmap lock) for `'a` that
    /// excludes every path that frees PMD tables.
    pub unsafe fn from_slot(backend: &'m B, slot: &'a B::PmdSlot) -> Self {
        // INVARIANT: the caller promises the slot's table is stable for 'a.
        PmdRef::from_parts(backend, slot)
    }

    /// The slot this reference points at.
    pub fn slot(&self) -> &'a B::PmdSlot {
        self.src
    }
}

impl<'m, 'g, B: PgtableBackend> PmdRef<'m, 'g, B, CopiedUnderRcu<'g>> {
    /// Tags a value copied from `slot` as `CopiedUnderRcu<'g>`.
    ///
    /// # Safety
    /// `slot` is one of `backend`'s, `value` was read from it inside a read section of
    /// `backend.rcu()` that lasts at least for `'g`, and `slot` stays readable for `'g`.
    pub unsafe fn from_copy(backend: &'m B, slot: &'g B::PmdSlot, value: B::PmdSnapshot) -> Self {
        // INVARIANT: the caller promises the section covers 'g.
        PmdRef::from_parts(backend, CopiedSource { value, slot })
    }

    /// Whether the source slot still holds the copied value (the GUP-fast recheck
    /// `pmd_val(pmd) != pmd_val(*pmdp)`, inverted). Meaningful only while `'g` lasts, which the
    /// borrow guarantees.
    pub fn still_installed(&self) -> bool {
        let now = self.backend.pmdp_get_lockless(self.src.slot);
        self.backend.pmd_same(&self.src.value, &now)
    }
}

impl<'m, B: PgtableBackend> PmdRef<'m, 'm, B, Unprotected> {
    /// Wraps a pmd value with no proof at all. `pte_offset_map` refuses it.
    pub fn unprotected(backend: &'m B, value: B::PmdSnapshot) -> Self {
        PmdRef::from_parts(backend, value)
    }
}

impl<B: PgtableBackend, P: Provenance> fmt::Debug for PmdRef<'_, '_, B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_marked::<P>(f, "PmdRef", "provenance", "value", &self.pmd_val())
    }
}

/// Copies an in-table pmd inside an open RCU read section (`pmdp_get_lockless` for case 2).
///
/// The result borrows the guard: it cannot be mapped after the section ends.
///
/// # Errors
/// [`PgtableError::WrongBackend`] (the in-memory MMU: [`Error::WrongMmu`](crate::Error::WrongMmu))
/// if `guard` belongs to another RCU domain than the pmd's backend.
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{pmdp_get_lockless, pte_offset_map};
/// use typed_pgtable::rcu::RcuDomain;
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// mmu.map_page(0x20_0000)?;
/// let mm = mmu.mmap_read_lock();
/// let pmd = mm.pmd_offset(0x20_0000)?.expect("upper levels exist");
/// let guard = mmu.rcu().read_lock();
/// let copy = pmdp_get_lockless(&pmd, &guard)?;
/// let map = pte_offset_map(&copy, 0x20_0000).expect("a PTE table");
/// assert!(map.ptep_get(0x20_0000).is_present());
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
pub fn pmdp_get_lockless<'m, 'a: 'g, 'g, B: PgtableBackend>(
    pmd: &PmdRef<'m, 'a, B, InTable>,
    guard: &'g RcuGuard<'_, B::Rcu>,
) -> Result<PmdRef<'m, 'g, B, CopiedUnderRcu<'g>>, B::Error> {
    if !core::ptr::eq(guard.domain(), pmd.backend.rcu()) {
        return Err(PgtableError::WrongBackend.into());
    }
    let value = pmd.backend.pmdp_get_lockless(pmd.src);
    // SAFETY: `guard` is an open read section of the backend's own domain (checked above) that
    // lives for 'g, and it was opened before this read. The slot stays readable for 'a: 'g.
    Ok(unsafe { PmdRef::from_copy(pmd.backend, pmd.src, value) })
}

/// The PMD lock of one slot's table, held (`pmd_lock` … `spin_unlock`).
///
/// Serialises installing, clearing, depositing and withdrawing at this slot. Lock order: walk
/// lock, then PMD lock, then PTE lock.
///
/// # Invariants
/// The backend's PMD lock for `pmd`'s slot is held by this thread until the guard drops.
#[must_use = "the PMD lock is released as soon as the guard is dropped"]
pub struct PmdLockGuard<'m, 'a, B: PgtableBackend> {
    pmd: PmdRef<'m, 'a, B, InTable>,
    _not_send: SpinBound,
}

/// Takes the PMD lock of an in-table slot (`pmd_lock`).
#[track_caller]
pub fn pmd_lock<'m, 'a, B: PgtableBackend>(
    pmd: &PmdRef<'m, 'a, B, InTable>,
) -> PmdLockGuard<'m, 'a, B> {
    // SAFETY: an `InTable` slot is one of the backend's (type invariant of `PmdRef`).
    unsafe { pmd.backend.pmd_lock(pmd.src) };
    // INVARIANT: the lock was just taken.
    PmdLockGuard {
        pmd: *pmd,
        _not_send: PhantomData,
    }
}

/// Tries to take the PMD lock without waiting (`spin_trylock`). Used where the lock order is
/// inverted (PT_RECLAIM takes the PMD lock while holding a PTE lock), which must never block.
#[track_caller]
pub fn pmd_trylock<'m, 'a, B: PgtableBackend>(
    pmd: &PmdRef<'m, 'a, B, InTable>,
) -> Option<PmdLockGuard<'m, 'a, B>> {
    // SAFETY: an `InTable` slot is one of the backend's (type invariant of `PmdRef`).
    let taken = unsafe { pmd.backend.pmd_trylock(pmd.src) };
    // INVARIANT: the guard exists only if the lock was taken.
    taken.then_some(PmdLockGuard {
        pmd: *pmd,
        _not_send: PhantomData,
    })
}

impl<'m, 'a, B: PgtableBackend> PmdLockGuard<'m, 'a, B> {
    /// The locked slot.
    pub fn pmd(&self) -> PmdRef<'m, 'a, B, InTable> {
        self.pmd
    }

    /// The slot's current value; stable against other software writers while locked.
    pub fn pmdp_get(&self) -> B::PmdSnapshot {
        self.pmd.pmd_val()
    }

    /// The backend.
    pub fn backend(&self) -> &'m B {
        self.pmd.backend
    }
}

impl<B: PgtableBackend> Drop for PmdLockGuard<'_, '_, B> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this guard holds the lock.
        unsafe { self.pmd.backend.pmd_unlock(self.pmd.src) }
    }
}

impl<B: PgtableBackend> fmt::Debug for PmdLockGuard<'_, '_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PmdLockGuard")
            .field("pmd", &self.pmd)
            .finish()
    }
}
