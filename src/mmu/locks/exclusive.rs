//! The exclusivity of `free_pgtables`: [`MmapWriteGuard::detach_range`] builds the
//! [`Exclusive`] token of a range from the mmap lock held for writing, the range's VMAs
//! detached and unlinked from the rmap. A walk lock that allows no installs, and the proof
//! that the range's tables may be cleared without the PTE lock.

use super::mmap::MmapWriteGuard;
use crate::bound::WalkBound;
use crate::error::Error;
use crate::mmu::frames::PmdSlot;
use crate::mmu::lockdep::{self, How, LockClass};
use crate::mmu::vma::Vma;
use crate::mmu::{Mmu, PMD_SIZE};
use crate::provenance::{ExclusiveAccess, InTable, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::vec::Vec;

impl<'m> MmapWriteGuard<'m> {
    /// Detaches the VMAs in `[start, start + len)` and returns the exclusive token for the
    /// range (the first half of `munmap`): each VMA is write-locked and marked detached, then
    /// unlinked from the VMA list and the rmap under the rmap write lock.
    ///
    /// The token borrows this guard mutably: no walk of the guard's own (and no `Attached`
    /// lock from one) is alive while the token clears slots without the PTE lock.
    ///
    /// # Errors
    /// A bad range, or [`Error::PartialVma`] if a VMA straddles the range's edge (this model
    /// does not split VMAs).
    #[track_caller]
    pub fn detach_range(&mut self, start: u64, len: u64) -> Result<Exclusive<'_, 'm>, Error> {
        let at = Location::caller();
        let mmu = self.mmu();
        let end = mmu.check_range(start, len)?;
        let victims: Vec<Arc<Vma>> = {
            let vmas = mmu.vmas.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = vmas
                .iter()
                .find(|v| v.start < end && start < v.end && (v.start < start || v.end > end))
            {
                return Err(Error::PartialVma { addr: v.start });
            }
            vmas.iter()
                .filter(|v| v.start < end && start < v.end)
                .cloned()
                .collect()
        };
        // Every check before anything changes.
        for v in &victims {
            mmu.lock_check(LockClass::Vma, v.id(), How::Blocking, at)?;
        }
        mmu.lock_check(LockClass::Rmap, 0, How::Blocking, at)?;
        for v in &victims {
            v.lock.write_lock();
            v.detached.store(true, Ordering::Release);
            v.lock.write_unlock();
        }
        {
            let _rmap = mmu.i_mmap_lock_write_at(at)?;
            let mut vmas = mmu.vmas.write().unwrap_or_else(|e| e.into_inner());
            vmas.retain(|v| !victims.iter().any(|x| Arc::ptr_eq(v, x)));
        }
        let mut slots = Vec::new();
        let mut va = start.next_multiple_of(PMD_SIZE);
        while va + PMD_SIZE <= end {
            if let Some(slot) = mmu.pmd_slot(va) {
                slots.push(slot as *const PmdSlot as usize);
            }
            va += PMD_SIZE;
        }
        // The audit's view: slots this thread may clear without the PTE lock (rule I8).
        lockdep::acquired(mmu.rcu.id(), LockClass::Mmap, lockdep::EXCLUSIVE, at);
        Ok(Exclusive {
            mm: self,
            start,
            end,
            slots,
            _not_send: PhantomData,
        })
    }
}

/// Exclusive access to a detached range (`free_pgtables`): the mmap lock held for writing and
/// the range's VMAs detached and unlinked from the rmap. Covers the pmd slots of the 2 MiB
/// regions that lie wholly inside the range.
///
/// `'a` is the borrow of the mmap write guard, `'m` the MMU's lifetime: a table cleared through
/// the token is owned for `'m` and may outlive the token and the lock.
///
/// # Invariants
/// `mm` is borrowed from a `&'a mut MmapWriteGuard` (`detach_range`), the VMAs of the range are
/// detached and unlinked, and `slots` are the addresses of the pmd slots of the 2 MiB regions
/// wholly inside the range.
#[must_use = "the exclusive token is the proof free_pgtables needs"]
pub struct Exclusive<'a, 'm> {
    mm: &'a MmapWriteGuard<'m>,
    start: u64,
    end: u64,
    slots: Vec<usize>,
    _not_send: WalkBound,
}

impl<'m> Exclusive<'_, 'm> {
    /// The MMU.
    pub fn mmu(&self) -> &'m Mmu {
        self.mm.mmu()
    }

    /// The range.
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Walks to the pmd slot for `va` inside the range.
    ///
    /// # Errors
    /// [`Error::OutsideVma`] outside the range; a bad address.
    pub fn pmd_offset(&self, va: u64) -> Result<Option<PmdRef<'m, '_, Mmu, InTable>>, Error> {
        WalkLock::pmd_offset(self, va)
    }
}

// SAFETY: the mmap write lock is held for as long as the token is borrowed; upper-level tables
// are never freed while the MMU lives. `!Send` (`WalkBound`).
unsafe impl<'m> WalkLock<'m, Mmu> for Exclusive<'_, 'm> {
    type Error = Error;

    fn backend(&self) -> &'m Mmu {
        self.mm.mmu()
    }

    fn pmd_slot(&self, va: u64) -> Result<Option<&PmdSlot>, Error> {
        self.mmu().token_walk(va, Some((self.start, self.end)))
    }
}

// SAFETY: the token holds the mmap lock for writing (no mmap-lock walker; the guard itself is
// borrowed mutably, so its own walks are over), the range's VMAs are detached (no VMA-lock
// walker can lock them) and unlinked from the rmap under its write lock (no rmap walker can
// reach them), and it covers only pmds wholly inside the range, so no other VMA's walker
// reaches those slots. Other removers all run under one of those locks. The token is `!Send`
// and `!Sync` (`WalkBound`), so only its holder's thread walks through it.
unsafe impl<'m> ExclusiveAccess<'m, Mmu> for Exclusive<'_, 'm> {
    fn backend(&self) -> &'m Mmu {
        self.mm.mmu()
    }

    fn covered_slot(&self, addr: u64) -> Result<Option<&PmdSlot>, Error> {
        let slot = self
            .mmu()
            .token_walk(addr, Some((self.start, self.end)))?
            .filter(|s| self.slots.contains(&(*s as *const PmdSlot as usize)));
        match slot {
            Some(s) => Ok(Some(s)),
            // In the range, but not a 2 MiB region wholly inside it (or no upper levels).
            None if self.mmu().pmd_slot(addr).is_some() => Err(Error::OutsideVma { addr }),
            None => Ok(None),
        }
    }
}

impl Drop for Exclusive<'_, '_> {
    fn drop(&mut self) {
        lockdep::released(self.mm.mmu().rcu.id(), LockClass::Mmap, lockdep::EXCLUSIVE);
    }
}

impl core::fmt::Debug for Exclusive<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exclusive")
            .field("start", &self.start)
            .field("end", &self.end)
            .finish()
    }
}
