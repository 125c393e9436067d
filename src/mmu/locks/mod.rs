//! The locks of the in-memory MMU, one file each, as token types.
//!
//! # The model
//!
//! A page-table walk needs a *walk lock*: a lock that keeps the VMA, and with it the upper
//! levels down to and including the PMD table, stable. Each walk lock here is a token type
//! that implements [`WalkLock`]; walks are methods of the token and return `InTable`
//! references that borrow it, so the borrow checker ends every use of a slot before the lock
//! is released, and a token of one MMU can only walk that MMU. Only some walk locks allow
//! *installing* a PTE table into an empty slot (rule I7): those implement [`InstallLock`].
//!
//! | token | file | excludes | installs ([`InstallLock`]) | lock-checker class | kernel |
//! |---|---|---|---|---|---|
//! | [`MmapReadGuard`] | `mmap.rs` | mmap writers, so `detach_range` and `free_pgtables` | yes | [`LockClass::Mmap`] | `mmap_read_lock` (`mmap_lock`) |
//! | [`MmapWriteGuard`] | `mmap.rs` | every other mmap-lock holder | yes | [`LockClass::Mmap`] | `mmap_write_lock` (`mmap_lock`) |
//! | [`VmaReadGuard`] | `vma.rs` | the VMA's writers, so detaching it | yes, inside the VMA | [`LockClass::Vma`] (a trylock) | per-VMA lock, `lock_vma_under_rcu` |
//! | [`VmaWriteGuard`] | `vma.rs` | the VMA's readers (they fail and fall back to the mmap lock) | yes, inside the VMA | [`LockClass::Vma`] | `vma_start_write` |
//! | [`RmapReadGuard`] | `rmap.rs` | unlinking file VMAs from the rmap | no | [`LockClass::Rmap`] | `i_mmap_lock_read` (`i_mmap_rwsem`) |
//! | [`RmapWriteGuard`] | `rmap.rs` | every rmap walker (not a walk lock itself) | no | [`LockClass::Rmap`] | `i_mmap_lock_write` (`i_mmap_rwsem`) |
//! | [`Exclusive`] | `exclusive.rs` | every walker of the range: mmap write lock, VMAs detached and unlinked | no (the range is about to be freed) | [`LockClass::Mmap`], instance `EXCLUSIVE` | the exclusivity of `free_pgtables` |
//! | split PMD/PTE locks | `spin.rs` | other holders of one table's lock (not walk locks: they guard entries) | — | [`LockClass::Pmd`], [`LockClass::Pte`] | `pmd_lock`, `pte_lockptr` (split page-table spinlocks) |
//!
//! Installing entries thus needs the mmap or VMA lock (faults); the rmap lock alone allows
//! walking and removing (khugepaged's `retract_page_tables`), never installing.
//!
//! The exclusive token of `free_pgtables` is built from the mmap lock held for writing: the
//! range's VMAs are write-locked, marked detached (so `lock_vma_under_rcu` fails) and unlinked
//! from the rmap (under the rmap lock held for writing, which waits for rmap walkers). After
//! that no walk lock reaches the range's slots, so tables can be cleared without the PTE lock.
//!
//! Every blocking lock call goes through the lock checker first ([`lockdep`]), in the order
//! of the classes above (mmap, VMA, rmap, PMD, PTE).

mod exclusive;
mod mmap;
mod rmap;
pub(crate) mod spin;
mod vma;

pub use exclusive::Exclusive;
pub use mmap::{MmapReadGuard, MmapWriteGuard};
pub use rmap::{RmapReadGuard, RmapWriteGuard};
pub(crate) use vma::RwSpin;
pub use vma::{VmaReadGuard, VmaWriteGuard};

use super::Mmu;
use super::PMD_SIZE;
use super::frames::PmdSlot;
use super::lockdep::{self, How, LockClass};
use crate::error::Error;
#[cfg(doc)]
use crate::provenance::{InstallLock, WalkLock};
use core::panic::Location;

impl Mmu {
    /// The lock checker's view of a lock this MMU is about to take here.
    pub(crate) fn lock_check(
        &self,
        class: LockClass,
        instance: u64,
        how: How,
        at: &'static Location<'static>,
    ) -> Result<(), Error> {
        let section = if how == How::Blocking && class <= LockClass::Rmap {
            self.rcu.section_open_here()
        } else {
            None
        };
        lockdep::check(self.rcu.id(), class, instance, how, section, at)
    }

    /// Takes a sleeping lock of `class` that the MMU has one of (the mmap lock, the rmap
    /// lock) with `take`: checked before, recorded after; the lock checker's report as an
    /// error.
    fn take_checked<T>(
        &self,
        class: LockClass,
        at: &'static Location<'static>,
        take: impl FnOnce() -> T,
    ) -> Result<T, Error> {
        self.lock_check(class, 0, How::Blocking, at)?;
        let lock = take();
        lockdep::acquired(self.rcu.id(), class, 0, at);
        Ok(lock)
    }

    /// The install check of a walk lock of this MMU that covers `[start, end)`.
    pub(crate) fn install_covered(
        &self,
        backend: &Mmu,
        slot: &PmdSlot,
        range: Option<(u64, u64)>,
    ) -> Result<(), Error> {
        if !core::ptr::eq(self, backend) {
            return Err(Error::WrongMmu);
        }
        let va = self.slot_va(slot).ok_or(Error::WrongMmu)?;
        match range {
            Some((start, end)) if va < start || va + PMD_SIZE > end => Err(Error::SlotNotCovered),
            _ => Ok(()),
        }
    }

    /// A walk to `va` for any walk-lock token, with the token's VMA bound checked.
    fn token_walk(&self, va: u64, bound: Option<(u64, u64)>) -> Result<Option<&PmdSlot>, Error> {
        self.check_va(va, 1)?;
        if let Some((start, end)) = bound {
            if va < start || va >= end {
                return Err(Error::OutsideVma { addr: va });
            }
        }
        Ok(self.pmd_slot(va))
    }
}
