//! VMAs and the locks that keep them stable: the per-VMA lock, the rmap lock, and the
//! exclusive token of `free_pgtables`.
//!
//! # The model
//!
//! A page-table walk is allowed under any lock that keeps the VMA, and with it the upper levels
//! down to the PMD table, stable: the mmap lock (read or write), the VMA's own lock (read or
//! write), or the rmap lock of a file mapping (`i_mmap_rwsem`). Each is a token type here; walks
//! are methods of the token and return `InTable` references that borrow it.
//!
//! Installing entries needs the mmap or VMA lock (faults); the rmap lock alone allows walking
//! and removing (khugepaged's `retract_page_tables`), never installing.
//!
//! The exclusive token of `free_pgtables` is built from the mmap lock held for writing: the
//! range's VMAs are write-locked, marked detached (so `lock_vma_under_rcu` fails) and unlinked
//! from the rmap (under the rmap lock held for writing, which waits for rmap walkers). After
//! that no walk lock reaches the range's slots, so tables can be cleared without the PTE lock.

use super::frames::PmdSlot;
use super::lockdep::{self, How, LockClass};
use super::stability::MmapWriteGuard;
use super::{Mmu, PAGE_SIZE, PMD_SIZE};
use crate::bound::{OnItsThread, WalkBound};
use crate::error::Error;
use crate::provenance::{ExclusiveAccess, InTable, InstallLock, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;

/// What backs a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmaKind {
    /// Anonymous memory.
    Anon,
    /// A (private) file mapping: reachable through the rmap lock; gets an `anon_vma` when a
    /// write fault copies a page.
    File,
}

/// A snapshot of a VMA's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmaInfo {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// What backs it.
    pub kind: VmaKind,
    /// Whether it has an `anon_vma` (anonymous pages may be mapped in it).
    pub anon_vma: bool,
}

/// A reader/writer spinlock: the per-VMA lock.
#[derive(Debug, Default)]
pub(crate) struct RwSpin(AtomicU32);

const WRITER: u32 = 1 << 31;
/// A writer is waiting: new readers fail (and fall back to the mmap lock), so the writer only
/// waits for the readers already inside and cannot be starved.
const PENDING: u32 = 1 << 30;

impl RwSpin {
    fn read_trylock(&self) -> bool {
        self.0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |v| {
                (v & (WRITER | PENDING) == 0).then_some(v + 1)
            })
            .is_ok()
    }
    fn read_unlock(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
    fn write_lock(&self) {
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
    fn write_unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// A VMA.
#[derive(Debug)]
pub(crate) struct Vma {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) kind: VmaKind,
    lock: RwSpin,
    pub(crate) anon_vma: AtomicBool,
    detached: AtomicBool,
}

impl Vma {
    pub(crate) fn info(&self) -> VmaInfo {
        VmaInfo {
            start: self.start,
            end: self.end,
            kind: self.kind,
            anon_vma: self.anon_vma.load(Ordering::Acquire),
        }
    }
    pub(crate) fn contains(&self, va: u64) -> bool {
        self.start <= va && va < self.end
    }

    /// The VMA's identity for the lock checker.
    pub(crate) fn id(&self) -> u64 {
        self as *const Vma as u64
    }
}

impl Mmu {
    pub(crate) fn vma_at(&self, va: u64) -> Option<Arc<Vma>> {
        let vmas = self.vmas.read().unwrap_or_else(|e| e.into_inner());
        vmas.iter().find(|v| v.contains(va)).cloned()
    }

    /// The VMA containing `va`, if any.
    pub fn find_vma(&self, va: u64) -> Option<VmaInfo> {
        self.vma_at(va).map(|v| v.info())
    }

    /// Creates a VMA over `[start, start + len)` (`mmap` with `MAP_FIXED_NOREPLACE`).
    ///
    /// # Errors
    /// A bad or misaligned range, or [`Error::AlreadyMapped`] if it overlaps a VMA.
    #[track_caller]
    pub fn mmap(&self, start: u64, len: u64, kind: VmaKind) -> Result<(), Error> {
        let end = self.check_range(start, len)?;
        let _mm = self.mmap_write_lock_at(Location::caller())?;
        let mut vmas = self.vmas.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vmas.iter().find(|v| v.start < end && start < v.end) {
            return Err(Error::AlreadyMapped {
                addr: v.start.max(start),
            });
        }
        vmas.push(Arc::new(Vma {
            start,
            end,
            kind,
            lock: RwSpin::default(),
            anon_vma: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        }));
        vmas.sort_by_key(|v| v.start);
        Ok(())
    }

    pub(crate) fn check_range(&self, start: u64, len: u64) -> Result<u64, Error> {
        self.check_va(start, PAGE_SIZE)?;
        if len == 0 {
            return Err(Error::EmptyRange { addr: start });
        }
        if len % PAGE_SIZE != 0 {
            return Err(Error::Misaligned {
                addr: len,
                align: PAGE_SIZE,
            });
        }
        let end = start.checked_add(len).ok_or(Error::OutOfRange {
            addr: start,
            limit: self.cfg.va_limit,
        })?;
        if end > self.cfg.va_limit {
            return Err(Error::OutOfRange {
                addr: end - 1,
                limit: self.cfg.va_limit,
            });
        }
        Ok(end)
    }

    /// Prepares the `anon_vma` of the VMA containing `va` (`anon_vma_prepare`), as the first
    /// write fault that copies a page of a private file mapping does. Under the mmap read lock
    /// and the page-table lock, like the kernel.
    pub(crate) fn anon_vma_prepare(&self, vma: &Vma) {
        if !vma.anon_vma.load(Ordering::Acquire) {
            let _ptl = self
                .page_table_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            vma.anon_vma.store(true, Ordering::Release);
        }
    }

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
        self.lock_check(LockClass::Rmap, 0, How::Blocking, at)?;
        let lock = self.i_mmap.read().unwrap_or_else(|e| e.into_inner());
        lockdep::acquired(self.rcu.id(), LockClass::Rmap, 0, at);
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
        self.lock_check(LockClass::Rmap, 0, How::Blocking, at)?;
        let lock = self.i_mmap.write().unwrap_or_else(|e| e.into_inner());
        lockdep::acquired(self.rcu.id(), LockClass::Rmap, 0, at);
        Ok(RmapWriteGuard {
            _mmu: self,
            _lock: OnItsThread(lock),
            _not_send: PhantomData,
        })
    }

    /// The first address of the 2 MiB range a pmd slot of this MMU maps, or `None` for a slot
    /// that is not an entry of one of its PMD tables.
    pub(crate) fn slot_va(&self, slot: &PmdSlot) -> Option<u64> {
        let (pfn, index) = self.frames.locate(slot)?;
        if self.frames.kind(pfn) != super::frames::FrameKind::Pmd {
            return None;
        }
        let base = self.frames.desc(pfn).pmd_base.load(Ordering::Acquire);
        Some(base + index as u64 * PMD_SIZE)
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
