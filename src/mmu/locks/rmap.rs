//! The rmap lock of the file mapping (`i_mmap_rwsem`): [`RmapReadGuard`], a walk lock for the
//! file VMAs linked into the rmap that does not allow installs (khugepaged's
//! `retract_page_tables`), and [`RmapWriteGuard`], which excludes every rmap walker.

use crate::bound::{OnItsThread, WalkBound};
use crate::error::Error;
use crate::mmu::Mmu;
use crate::mmu::frames::PmdSlot;
use crate::mmu::lockdep::{self, LockClass};
use crate::mmu::vma::{VmaInfo, VmaKind};
use crate::provenance::{InTable, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;

impl Mmu {
    /// Takes the rmap lock of the file mapping for reading (`i_mmap_lock_read`).
    ///
    /// # Panics
    /// With the lock checker's report if the call could deadlock (see
    /// [`super::lockdep`]).
    #[track_caller]
    pub fn i_mmap_lock_read(&self) -> RmapReadGuard<'_> {
        let guard = self.i_mmap_lock_read_at(Location::caller());
        guard.unwrap_or_else(|e| panic!("lock checker: {e}"))
    }

    /// Takes the rmap lock of the file mapping for writing (`i_mmap_lock_write`).
    ///
    /// # Panics
    /// As [`Mmu::i_mmap_lock_read`].
    #[track_caller]
    pub fn i_mmap_lock_write(&self) -> RmapWriteGuard<'_> {
        let guard = self.i_mmap_lock_write_at(Location::caller());
        guard.unwrap_or_else(|e| panic!("lock checker: {e}"))
    }

    /// `i_mmap_lock_read`, checked.
    pub(crate) fn i_mmap_lock_read_at(
        &self,
        at: &'static Location<'static>,
    ) -> Result<RmapReadGuard<'_>, Error> {
        let lock = self.take_checked(LockClass::Rmap, at, || {
            self.i_mmap.read().unwrap_or_else(|e| e.into_inner())
        })?;
        Ok(RmapReadGuard {
            mmu: self,
            _lock: OnItsThread(lock),
            _not_send: PhantomData,
        })
    }

    /// `i_mmap_lock_write`, checked.
    pub(crate) fn i_mmap_lock_write_at(
        &self,
        at: &'static Location<'static>,
    ) -> Result<RmapWriteGuard<'_>, Error> {
        let lock = self.take_checked(LockClass::Rmap, at, || {
            self.i_mmap.write().unwrap_or_else(|e| e.into_inner())
        })?;
        Ok(RmapWriteGuard {
            _mmu: self,
            _lock: OnItsThread(lock),
            _not_send: PhantomData,
        })
    }
}

/// The rmap lock of the file mapping held for reading (`i_mmap_lock_read`): a walk lock for
/// addresses inside file VMAs still linked into the rmap. It does not allow installing.
#[must_use = "the rmap lock is released as soon as the guard is dropped"]
pub struct RmapReadGuard<'m> {
    mmu: &'m Mmu,
    // INVARIANT (`OnItsThread`): the token is `!Send` and `!Sync` through `_not_send`.
    _lock: OnItsThread<RwLockReadGuard<'m, ()>>,
    _not_send: WalkBound,
}

impl<'m> RmapReadGuard<'m> {
    /// The MMU.
    pub fn mmu(&self) -> &'m Mmu {
        self.mmu
    }

    /// The file VMAs linked into the rmap (`vma_interval_tree_foreach`). Their `anon_vma` field
    /// is a racy snapshot: the rmap lock does not keep it stable.
    pub fn file_vmas(&self) -> Vec<VmaInfo> {
        let vmas = self.mmu.vmas.read().unwrap_or_else(|e| e.into_inner());
        vmas.iter()
            .filter(|v| v.kind == VmaKind::File && !v.detached.load(Ordering::Acquire))
            .map(|v| v.info())
            .collect()
    }

    /// Whether the file VMA containing `va` has an `anon_vma` now. Only a snapshot: recheck it
    /// under the PMD and PTE locks before relying on it (bug B4).
    pub fn vma_has_anon_vma(&self, va: u64) -> bool {
        self.mmu
            .vma_at(va)
            .is_some_and(|v| v.anon_vma.load(Ordering::Acquire))
    }

    /// Walks to the pmd slot for `va`, which must lie in a linked file VMA.
    ///
    /// # Errors
    /// [`Error::OutsideVma`] if no linked file VMA contains `va`; a bad address.
    pub fn pmd_offset(&self, va: u64) -> Result<Option<PmdRef<'m, '_, Mmu, InTable>>, Error> {
        WalkLock::pmd_offset(self, va)
    }
}

// SAFETY: the walk finds only slots of a file VMA linked into the rmap, and the rmap lock is
// held for as long as the token is borrowed, so `free_pgtables` (which unlinks under the rmap
// write lock first) cannot run on it; upper-level tables are never freed while the MMU lives.
// `!Send` (`WalkBound`).
unsafe impl<'m> WalkLock<'m, Mmu> for RmapReadGuard<'m> {
    type Error = Error;

    fn backend(&self) -> &'m Mmu {
        self.mmu
    }

    fn pmd_slot(&self, va: u64) -> Result<Option<&PmdSlot>, Error> {
        let vma = self
            .mmu
            .vma_at(va)
            .filter(|v| v.kind == VmaKind::File && !v.detached.load(Ordering::Acquire))
            .ok_or(Error::OutsideVma { addr: va })?;
        self.mmu.token_walk(va, Some((vma.start, vma.end)))
    }
}

impl Drop for RmapReadGuard<'_> {
    fn drop(&mut self) {
        lockdep::released(self.mmu.rcu.id(), LockClass::Rmap, 0);
    }
}

impl Drop for RmapWriteGuard<'_> {
    fn drop(&mut self) {
        lockdep::released(self._mmu.rcu.id(), LockClass::Rmap, 0);
    }
}

impl core::fmt::Debug for RmapReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RmapReadGuard").finish_non_exhaustive()
    }
}

/// The rmap lock held for writing (`i_mmap_lock_write`, `take_rmap_locks`): excludes every
/// rmap walker.
#[must_use = "the rmap lock is released as soon as the guard is dropped"]
pub struct RmapWriteGuard<'m> {
    _mmu: &'m Mmu,
    // INVARIANT (`OnItsThread`): the token is `!Send` and `!Sync` through `_not_send`.
    _lock: OnItsThread<RwLockWriteGuard<'m, ()>>,
    _not_send: WalkBound,
}

impl core::fmt::Debug for RmapWriteGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RmapWriteGuard").finish_non_exhaustive()
    }
}
