//! The per-VMA lock (`lock_vma_under_rcu` … `vma_end_read`, `vma_start_write`): the lock
//! itself, a reader/writer spinlock in each VMA, and its tokens [`VmaReadGuard`] and
//! [`VmaWriteGuard`], walk locks for addresses inside the locked VMA that allow installs.

use super::mmap::MmapWriteGuard;
use crate::bound::WalkBound;
use crate::error::Error;
use crate::mmu::Mmu;
use crate::mmu::frames::PmdSlot;
use crate::mmu::lockdep::{self, How, LockClass};
use crate::mmu::vma::{Vma, VmaInfo};
use crate::provenance::{InTable, InstallLock, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A reader/writer spinlock: the per-VMA lock.
#[derive(Debug, Default)]
pub(crate) struct RwSpin(AtomicU32);

const WRITER: u32 = 1 << 31;
/// A writer is waiting: new readers fail (and fall back to the mmap lock), so the writer only
/// waits for the readers already inside and cannot be starved.
const PENDING: u32 = 1 << 30;

impl RwSpin {
    pub(super) fn read_trylock(&self) -> bool {
        self.0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |v| {
                (v & (WRITER | PENDING) == 0).then_some(v + 1)
            })
            .is_ok()
    }
    pub(super) fn read_unlock(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
    pub(super) fn write_lock(&self) {
        // Announce (one writer at a time: writers hold the mmap lock for writing) ...
        while self
            .0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |v| {
                (v & (WRITER | PENDING) == 0).then_some(v | PENDING)
            })
            .is_err()
        {
            std::thread::yield_now();
        }
        // ... then wait for the readers already inside to leave.
        while self
            .0
            .compare_exchange_weak(PENDING, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
    }
    pub(super) fn write_unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Mmu {
    /// Takes the read lock of the VMA containing `va` without the mmap lock
    /// (`lock_vma_under_rcu`). `None` if there is no VMA there or it is write-locked or
    /// detached; the caller falls back to the mmap lock, as in the kernel.
    #[track_caller]
    pub fn lock_vma_under_rcu(&self, va: u64) -> Option<VmaReadGuard<'_>> {
        let vma = self.vma_at(va)?;
        if !vma.lock.read_trylock() {
            return None;
        }
        if vma.detached.load(Ordering::Acquire) {
            vma.lock.read_unlock();
            return None;
        }
        // A trylock: it never waits, so the checker only records it.
        lockdep::acquired(self.rcu.id(), LockClass::Vma, vma.id(), Location::caller());
        Some(VmaReadGuard {
            mmu: self,
            vma,
            _not_send: PhantomData,
        })
    }
}

/// The read lock of one VMA (`lock_vma_under_rcu` … `vma_end_read`): a walk lock for
/// addresses inside that VMA.
#[must_use = "the VMA lock is released as soon as the guard is dropped"]
pub struct VmaReadGuard<'m> {
    mmu: &'m Mmu,
    vma: Arc<Vma>,
    _not_send: WalkBound,
}

// SAFETY: the VMA read lock keeps the VMA attached (`detach_range` write-locks it first), and
// the check allows only slots whose whole 2 MiB range lies inside it, so no `Exclusive` of
// another range covers them.
unsafe impl InstallLock<Mmu> for VmaReadGuard<'_> {
    fn allows_install(&self, backend: &Mmu, slot: &PmdSlot) -> Result<(), Error> {
        self.mmu
            .install_covered(backend, slot, Some((self.vma.start, self.vma.end)))
    }
}

impl<'m> VmaReadGuard<'m> {
    /// The MMU.
    pub fn mmu(&self) -> &'m Mmu {
        self.mmu
    }

    /// The locked VMA.
    pub fn vma(&self) -> VmaInfo {
        self.vma.info()
    }

    /// Walks to the pmd slot for `va` (`pmd_offset`); `None` if an upper level is missing.
    ///
    /// # Errors
    /// [`Error::OutsideVma`] if `va` is not inside the locked VMA; a bad address.
    pub fn pmd_offset(&self, va: u64) -> Result<Option<PmdRef<'m, '_, Mmu, InTable>>, Error> {
        WalkLock::pmd_offset(self, va)
    }
}

// SAFETY: the slot is in a PMD table of this MMU; upper-level tables are never freed while the
// MMU lives, and the VMA lock is held (and the VMA attached: `free_pgtables` detaches it under
// the VMA write lock first) for as long as the token is borrowed. `!Send` (`WalkBound`).
unsafe impl<'m> WalkLock<'m, Mmu> for VmaReadGuard<'m> {
    type Error = Error;

    fn backend(&self) -> &'m Mmu {
        self.mmu
    }

    fn pmd_slot(&self, va: u64) -> Result<Option<&PmdSlot>, Error> {
        self.mmu
            .token_walk(va, Some((self.vma.start, self.vma.end)))
    }
}

impl Drop for VmaReadGuard<'_> {
    fn drop(&mut self) {
        lockdep::released(self.mmu.rcu.id(), LockClass::Vma, self.vma.id());
        self.vma.lock.read_unlock();
    }
}

impl core::fmt::Debug for VmaReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("VmaReadGuard")
            .field(&self.vma.info())
            .finish()
    }
}

/// The write lock of one VMA (`vma_start_write`), taken under the mmap write lock. Excludes
/// every `lock_vma_under_rcu` reader of the VMA (they wait for nothing: they fail and fall back
/// to the mmap lock, which the holder has for writing).
#[must_use = "the VMA lock is released as soon as the guard is dropped"]
pub struct VmaWriteGuard<'a> {
    mm: &'a MmapWriteGuard<'a>,
    vma: Arc<Vma>,
    _not_send: WalkBound,
}

// SAFETY: as for `VmaReadGuard`; the mmap write lock is held as well.
unsafe impl InstallLock<Mmu> for VmaWriteGuard<'_> {
    fn allows_install(&self, backend: &Mmu, slot: &PmdSlot) -> Result<(), Error> {
        self.mm
            .mmu()
            .install_covered(backend, slot, Some((self.vma.start, self.vma.end)))
    }
}

impl<'a> VmaWriteGuard<'a> {
    /// The locked VMA.
    pub fn vma(&self) -> VmaInfo {
        self.vma.info()
    }

    /// Walks to the pmd slot for `va`, which must be inside the locked VMA.
    ///
    /// # Errors
    /// [`Error::OutsideVma`]; a bad address.
    pub fn pmd_offset(&self, va: u64) -> Result<Option<PmdRef<'a, '_, Mmu, InTable>>, Error> {
        WalkLock::pmd_offset(self, va)
    }
}

// SAFETY: as for `VmaReadGuard`; the mmap write lock is held too.
unsafe impl<'a> WalkLock<'a, Mmu> for VmaWriteGuard<'a> {
    type Error = Error;

    fn backend(&self) -> &'a Mmu {
        self.mm.mmu()
    }

    fn pmd_slot(&self, va: u64) -> Result<Option<&PmdSlot>, Error> {
        self.mm
            .mmu()
            .token_walk(va, Some((self.vma.start, self.vma.end)))
    }
}

impl Drop for VmaWriteGuard<'_> {
    fn drop(&mut self) {
        lockdep::released(self.mm.mmu().rcu.id(), LockClass::Vma, self.vma.id());
        self.vma.lock.write_unlock();
    }
}

impl core::fmt::Debug for VmaWriteGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("VmaWriteGuard")
            .field(&self.vma.info())
            .finish()
    }
}

impl<'m> MmapWriteGuard<'m> {
    /// Write-locks the VMA containing `va` (`vma_start_write`): waits for its readers, and new
    /// `lock_vma_under_rcu` calls fail until the guard drops.
    ///
    /// # Panics
    /// With the lock checker's report if the call could deadlock: the thread holds the VMA's
    /// read lock (it would wait for itself), or a later lock in the order.
    #[track_caller]
    pub fn vma_start_write(&self, va: u64) -> Option<VmaWriteGuard<'_>> {
        let guard = self.vma_start_write_at(va, Location::caller());
        guard.unwrap_or_else(|e| panic!("lock checker: {e}"))
    }

    /// `vma_start_write`, checked.
    pub(crate) fn vma_start_write_at(
        &self,
        va: u64,
        at: &'static Location<'static>,
    ) -> Result<Option<VmaWriteGuard<'_>>, Error> {
        let Some(vma) = self.mmu().vma_at(va) else {
            return Ok(None);
        };
        let mmu = self.mmu();
        mmu.lock_check(LockClass::Vma, vma.id(), How::Blocking, at)?;
        vma.lock.write_lock();
        lockdep::acquired(mmu.rcu.id(), LockClass::Vma, vma.id(), at);
        Ok(Some(VmaWriteGuard {
            mm: self,
            vma,
            _not_send: PhantomData,
        }))
    }
}
