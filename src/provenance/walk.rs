//! Walk locks: the tokens that keep the upper levels stable, and the one place that turns a
//! slot into an `InTable` reference.
//!
//! # The model
//!
//! A pmd slot is safe to keep (and to map through, case 3) while the PMD table holding it stays
//! attached and alive. The kernel guarantees that with a *walk lock*: the mmap lock, a VMA
//! lock, the rmap lock, or the exclusivity of `free_pgtables`; each excludes every path that
//! frees PMD tables under the range it covers. A kernel-like project has its own such locks.
//!
//! [`WalkLock`] is the trait for them. An implementor says how to find the slot for an
//! address under its lock ([`WalkLock::pmd_slot`]) and promises, in the trait's `unsafe`
//! contract, that the slot stays valid while the token is borrowed; the provided
//! [`WalkLock::pmd_offset`] then makes the `InTable` reference. Implementors never write
//! `PmdRef::from_slot` themselves. Lockless walkers (GUP-fast) have no lock: their backend
//! implements [`LocklessWalk`], whose provided
//! [`pmd_copy_lockless`](LocklessWalk::pmd_copy_lockless) copies the slot inside an open read
//! section and returns a `CopiedUnderRcu<'g>` copy, so the author of a GUP-fast walk on any
//! backend writes no `unsafe`.
//!
//! Every walk lock keeps the upper levels stable, but only some allow *populating* an empty
//! slot (rule I7): the kernel installs PTE tables from the fault path, under the mmap lock or
//! the VMA lock, never from a context that holds only the rmap lock (khugepaged's
//! `retract_page_tables`) or the exclusivity of `free_pgtables` (which is about to free the
//! range). [`DetachedPmd::pmd_populate`](super::DetachedPmd::pmd_populate) therefore takes,
//! besides the PMD lock, the walk lock that allows the install, bounded by [`InstallLock`]:
//! with the rmap lock alone the call does not compile.

use super::backend::PgtableBackend;
use super::error::PgtableError;
use super::marker::{CopiedUnderRcu, InTable};
use super::pmd::PmdRef;
use crate::rcu::RcuGuard;

/// A token that keeps the upper levels of some range stable while it is held (a walk lock:
/// the mmap lock, a VMA lock, the rmap lock, exclusivity).
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{WalkLock, pte_offset_map_lock};
///
/// /// Works under any walk lock of any backend.
/// fn is_mapped<'m, L: WalkLock<'m, Mmu>>(lock: &L, va: u64) -> Result<bool, L::Error> {
///     Ok(lock
///         .pmd_offset(va)?
///         .is_some_and(|pmd| pte_offset_map_lock(&pmd, va).is_ok_and(|p| p.pte().is_present())))
/// }
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// mmu.map_page(0x20_0000)?;
/// assert!(is_mapped(&mmu.mmap_read_lock(), 0x20_0000)?);
/// assert!(!is_mapped(&mmu.i_mmap_lock_read(), 0x20_0000).unwrap_or(false));
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// # Safety
///
/// Implementors promise that every slot [`pmd_slot`](Self::pmd_slot) returns is one of
/// [`backend`](Self::backend)'s slots, inside a PMD table that stays attached to the tree and
/// alive for as long as `self` is borrowed: while the token lives, no path that frees or
/// detaches that PMD table can run. The token must not be `Send` if its lock belongs to the
/// thread that took it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a walk lock of this backend",
    label = "this does not keep the upper page-table levels stable",
    note = "walk under a token that holds the mmap lock, a VMA lock, the rmap lock or exclusivity; a lockless walk copies the pmd instead (`LocklessWalk::pmd_copy_lockless`)"
)]
pub unsafe trait WalkLock<'m, B: PgtableBackend + 'm> {
    /// Why this lock refuses an address (outside the VMA it covers, not canonical, ...).
    type Error;

    /// The backend this lock belongs to.
    fn backend(&self) -> &'m B;

    /// The pmd slot for `addr` under this lock: `None` if an upper level is missing.
    ///
    /// # Errors
    /// The lock's reason for refusing `addr`.
    fn pmd_slot(&self, addr: u64) -> Result<Option<&B::PmdSlot>, Self::Error>;

    /// Walks to the pmd for `addr` (`pmd_offset`): an `InTable` reference that borrows this
    /// lock. `None` if an upper level is missing.
    ///
    /// # Errors
    /// As [`pmd_slot`](Self::pmd_slot).
    fn pmd_offset(&self, addr: u64) -> Result<Option<PmdRef<'m, '_, B, InTable>>, Self::Error> {
        let backend = self.backend();
        Ok(self.pmd_slot(addr)?.map(|slot| {
            // SAFETY: by the trait's contract the slot is `backend`'s and its PMD table stays
            // attached and alive while `self` is borrowed, which the reference's `'_` ties it to.
            unsafe { PmdRef::from_slot(backend, slot) }
        }))
    }
}

/// A backend whose upper levels a walker may read without any lock, inside a read section of
/// its RCU domain (GUP-fast, the hardware walker).
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{LocklessWalk, PgtableBackend, pte_offset_map};
/// use typed_pgtable::rcu::RcuDomain;
///
/// /// GUP-fast's first steps, for any backend, with no `unsafe`.
/// fn pte_lockless<B: LocklessWalk>(b: &B, addr: u64) -> Option<B::Pte> {
///     let guard = b.rcu().read_lock();
///     let pmd = b.pmd_copy_lockless(&guard, addr).ok()??;
///     let map = pte_offset_map(&pmd, addr).ok()?;
///     let pte = map.ptep_get(addr);
///     // The recheck: the table was still installed after the read.
///     pmd.still_installed().then_some(pte)
/// }
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// mmu.map_page(0x20_0000)?;
/// assert!(pte_lockless(&mmu, 0x20_0000).is_some_and(|p| p.is_present()));
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// # Safety
///
/// Implementors promise that every slot [`pmd_slot_lockless`](Self::pmd_slot_lockless)
/// returns is one of this backend's slots and stays readable for as long as `guard`'s read
/// section is open (a PMD table is freed only after a grace period of [`rcu`](PgtableBackend::rcu),
/// or never).
pub unsafe trait LocklessWalk: PgtableBackend + Sized {
    /// The pmd slot for `addr`, found without locks inside `guard`'s read section; `None` if
    /// an upper level is missing or `addr` is outside what the backend maps.
    fn pmd_slot_lockless<'g>(
        &'g self,
        guard: &'g RcuGuard<'_, Self::Rcu>,
        addr: u64,
    ) -> Option<&'g Self::PmdSlot>;

    /// Copies the pmd for `addr` inside `guard`'s read section (`pmdp_get_lockless` at the end
    /// of a lockless walk): a `CopiedUnderRcu<'g>` copy that cannot outlive the section.
    ///
    /// # Errors
    /// [`PgtableError::WrongBackend`] if `guard` belongs to another RCU domain than this
    /// backend's.
    fn pmd_copy_lockless<'g>(
        &'g self,
        guard: &'g RcuGuard<'_, Self::Rcu>,
        addr: u64,
    ) -> Result<Option<PmdRef<'g, 'g, Self, CopiedUnderRcu<'g>>>, Self::Error> {
        if !core::ptr::eq(guard.domain(), self.rcu()) {
            return Err(PgtableError::WrongBackend.into());
        }
        Ok(self.pmd_slot_lockless(guard, addr).map(|slot| {
            let value = self.pmdp_get_lockless(slot);
            // SAFETY: `guard` is an open section of this backend's domain (checked above),
            // opened before this read and alive for 'g; by the trait's contract the slot is
            // this backend's and stays readable while the section is open.
            unsafe { PmdRef::from_copy(self, slot, value) }
        }))
    }
}

/// A walk lock under which PTE tables may be installed (the mmap lock, a VMA lock).
///
/// # Safety
/// [`allows_install`](Self::allows_install) returns `Ok` only if `backend` is the backend this
/// lock belongs to and, while the lock is held, no remover that works by exclusivity
/// ([`ExclusiveAccess`](super::ExclusiveAccess)) covers `slot`: an install it did not expect
/// would be freed, or stranded, behind its back.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not allow installing a PTE table (rule I7)",
    label = "this lock allows walking and removing, not populating",
    note = "a table is populated only from a context holding the mmap lock or a VMA lock (the fault path): pass an `MmapReadGuard`, an `MmapWriteGuard` or a VMA guard",
    note = "the rmap lock alone (`i_mmap_lock_read`) lets khugepaged walk and retract, never install"
)]
pub unsafe trait InstallLock<B: PgtableBackend> {
    /// Whether this lock allows installing a table in `slot` of `backend`.
    ///
    /// # Errors
    /// [`PgtableError::WrongBackend`] for a slot or backend this lock does not belong to,
    /// [`PgtableError::SlotNotCovered`] for a slot outside what it covers (another VMA's), or
    /// the backend's own reason.
    fn allows_install(&self, backend: &B, slot: &B::PmdSlot) -> Result<(), B::Error>;
}
