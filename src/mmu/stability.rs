//! Stability locks as token types, and the walks they allow.
//!
//! A walk lock keeps the upper levels (down to and including the PMD table) stable. Walks are
//! methods of the token, so the `InTable` references they return borrow it: the borrow checker
//! ends every use of a slot before the lock is released, and a token of one MMU can only walk
//! that MMU.

use super::Mmu;
use super::entry::{PmdKind, classify_pmd, table_entry};
use super::frames::{ENTRIES, FrameKind, PmdSlot};
use super::lockdep::{self, How, LockClass};
use crate::bound::{OnItsThread, WalkBound};
use crate::error::Error;
use crate::provenance::{InTable, InstallLock, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;

/// Index of `va` at `level` (4 = PGD … 1 = PTE).
pub(crate) fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) as usize) % ENTRIES
}

impl Mmu {
    /// Checks that `va` is canonical, aligned to `align` and inside the configured space.
    pub(crate) fn check_va(&self, va: u64, align: u64) -> Result<(), Error> {
        if (((va << 16) as i64) >> 16) as u64 != va {
            return Err(Error::NonCanonical { addr: va });
        }
        if va % align != 0 {
            return Err(Error::Misaligned { addr: va, align });
        }
        if va >= self.cfg.va_limit {
            return Err(Error::OutOfRange {
                addr: va,
                limit: self.cfg.va_limit,
            });
        }
        Ok(())
    }

    /// The table one level down from `table`'s entry for `va`, if present.
    fn next_table(&self, table: u64, level: u32, va: u64) -> Option<u64> {
        let raw = self
            .frames
            .cell(table, index(va, level))
            .0
            .load(Ordering::Acquire);
        match classify_pmd(raw, self.frames.nframes() as u64) {
            PmdKind::Table(pfn) => Some(pfn),
            _ => None,
        }
    }

    /// The pmd slot for `va`, if the upper levels exist. Acquire loads: safe for lockless
    /// walkers too, because upper-level tables are never freed while the MMU lives.
    pub(crate) fn pmd_slot(&self, va: u64) -> Option<&PmdSlot> {
        let pud = self.next_table(self.root, 4, va)?;
        let pmd = self.next_table(pud, 3, va)?;
        Some(self.frames.cell(pmd, index(va, 2)))
    }

    /// How many upper-level tables a walk to `va` would have to allocate.
    pub(crate) fn missing_upper(&self, va: u64) -> usize {
        match self.next_table(self.root, 4, va) {
            None => 2,
            Some(pud) => usize::from(self.next_table(pud, 3, va).is_none()),
        }
    }

    /// The pmd slot for `va`, installing missing upper levels from `reserve` under the
    /// page-table lock (`__pud_alloc`, `__pmd_alloc`).
    pub(crate) fn pmd_slot_alloc(
        &self,
        va: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<&PmdSlot, Error> {
        let mut table = self.root;
        for (level, kind) in [(4, FrameKind::Pud), (3, FrameKind::Pmd)] {
            table = match self.next_table(table, level, va) {
                Some(next) => next,
                None => {
                    let _ptl = self
                        .page_table_lock
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let slot = self.frames.cell(table, index(va, level));
                    match classify_pmd(slot.0.load(Ordering::Acquire), self.frames.nframes() as u64)
                    {
                        PmdKind::Table(next) => next,
                        _ => {
                            let new = match reserve.pop() {
                                Some(pfn) => pfn,
                                None => self.frames.alloc_n(1, kind)?[0],
                            };
                            self.frames.set_kind(new, kind);
                            if kind == FrameKind::Pmd {
                                // One PMD table maps 1 GiB.
                                self.frames
                                    .desc(new)
                                    .pmd_base
                                    .store(va & !((1 << 30) - 1), Ordering::Release);
                            }
                            slot.0.store(table_entry(new), Ordering::Release);
                            new
                        }
                    }
                }
            };
        }
        Ok(self.frames.cell(table, index(va, 2)))
    }

    /// Takes the mmap lock for reading (`mmap_read_lock`).
    ///
    /// # Panics
    /// With the lock checker's report if the call could deadlock: inside an RCU read section
    /// of this MMU, with the mmap lock already held, or after a lock that comes later in the
    /// order (see [`super::lockdep`]).
    #[track_caller]
    pub fn mmap_read_lock(&self) -> MmapReadGuard<'_> {
        let at = Location::caller();
        let guard = self.mmap_read_lock_at(at);
        guard.unwrap_or_else(|e| panic!("lock checker: {e}"))
    }

    /// Takes the mmap lock for writing (`mmap_write_lock`).
    ///
    /// # Panics
    /// As [`Mmu::mmap_read_lock`].
    #[track_caller]
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        let at = Location::caller();
        let guard = self.mmap_write_lock_at(at);
        guard.unwrap_or_else(|e| panic!("lock checker: {e}"))
    }

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

    /// `mmap_read_lock`, checked: the lock checker's report as an error.
    pub(crate) fn mmap_read_lock_at(
        &self,
        at: &'static Location<'static>,
    ) -> Result<MmapReadGuard<'_>, Error> {
        self.lock_check(LockClass::Mmap, 0, How::Blocking, at)?;
        let lock = self.mmap_lock.read().unwrap_or_else(|e| e.into_inner());
        lockdep::acquired(self.rcu.id(), LockClass::Mmap, 0, at);
        Ok(MmapReadGuard {
            mmu: self,
            _lock: OnItsThread(lock),
            _not_send: PhantomData,
        })
    }

    /// `mmap_write_lock`, checked.
    pub(crate) fn mmap_write_lock_at(
        &self,
        at: &'static Location<'static>,
    ) -> Result<MmapWriteGuard<'_>, Error> {
        self.lock_check(LockClass::Mmap, 0, How::Blocking, at)?;
        let lock = self.mmap_lock.write().unwrap_or_else(|e| e.into_inner());
        lockdep::acquired(self.rcu.id(), LockClass::Mmap, 0, at);
        Ok(MmapWriteGuard {
            mmu: self,
            _lock: OnItsThread(lock),
            _not_send: PhantomData,
        })
    }
}

macro_rules! walks {
    ($guard:ident) => {
        impl<'m> $guard<'m> {
            /// The MMU this lock belongs to.
            pub fn mmu(&self) -> &'m Mmu {
                self.mmu
            }

            /// Walks to the pmd slot for `va` (`pmd_offset`): `None` if an upper level is
            /// missing. The reference borrows this lock.
            ///
            /// # Errors
            /// [`Error::NonCanonical`] or [`Error::OutOfRange`] for a bad address.
            pub fn pmd_offset(
                &self,
                va: u64,
            ) -> Result<Option<PmdRef<'m, '_, Mmu, InTable>>, Error> {
                WalkLock::pmd_offset(self, va)
            }

            /// Walks to the pmd slot for `va`, allocating missing upper levels (`pmd_alloc`).
            ///
            /// # Errors
            /// A bad address, or [`Error::OutOfFrames`] (nothing is allocated then).
            pub fn pmd_alloc(&self, va: u64) -> Result<PmdRef<'m, '_, Mmu, InTable>, Error> {
                self.mmu.check_va(va, 1)?;
                let need = self.mmu.missing_upper(va);
                let mut reserve = self.mmu.frames.alloc_n(need, FrameKind::Pmd)?;
                let slot = self.mmu.pmd_slot_alloc(va, &mut reserve).map(|_| ());
                for pfn in reserve {
                    self.mmu.frames.free(pfn);
                }
                slot?;
                WalkLock::pmd_offset(self, va)?.ok_or(Error::NotMapped { addr: va })
            }
        }

        // SAFETY: the slot is in a PMD table of this MMU (`Mmu::pmd_slot`); upper-level tables
        // are never freed while the MMU lives, and the mmap lock is held for as long as the
        // token is borrowed. The token is `!Send` (`WalkBound`).
        unsafe impl<'m> WalkLock<'m, Mmu> for $guard<'m> {
            type Error = Error;

            fn backend(&self) -> &'m Mmu {
                self.mmu
            }

            fn pmd_slot(&self, va: u64) -> Result<Option<&PmdSlot>, Error> {
                self.mmu.check_va(va, 1)?;
                Ok(self.mmu.pmd_slot(va))
            }
        }

        // SAFETY: the mmap lock (either mode) excludes `detach_range`, which needs it for
        // writing (a writer's own `Exclusive` borrows its guard mutably, so the guard cannot
        // be used while one lives); and the check allows only this MMU's PMD-table slots.
        unsafe impl InstallLock<Mmu> for $guard<'_> {
            fn allows_install(&self, backend: &Mmu, slot: &PmdSlot) -> Result<(), Error> {
                self.mmu.install_covered(backend, slot, None)
            }
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                lockdep::released(self.mmu.rcu.id(), LockClass::Mmap, 0);
            }
        }

        impl core::fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($guard)).finish_non_exhaustive()
            }
        }
    };
}

impl<'m> MmapReadGuard<'m> {
    /// `pmd_alloc` drawing new upper-level tables from a reservation.
    pub(crate) fn pmd_alloc_from(
        &self,
        va: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<PmdRef<'m, '_, Mmu, InTable>, Error> {
        self.mmu.pmd_slot_alloc(va, reserve)?;
        WalkLock::pmd_offset(self, va)?.ok_or(Error::NotMapped { addr: va })
    }
}

/// The mmap lock held for reading: a walk lock (faults, zaps, khugepaged's walks).
#[must_use = "the mmap lock is released as soon as the guard is dropped"]
pub struct MmapReadGuard<'m> {
    mmu: &'m Mmu,
    // INVARIANT (`OnItsThread`): the token is `!Send` and `!Sync` through `_not_send`.
    _lock: OnItsThread<RwLockReadGuard<'m, ()>>,
    _not_send: WalkBound,
}

/// The mmap lock held for writing: excludes every other mmap-lock holder.
#[must_use = "the mmap lock is released as soon as the guard is dropped"]
pub struct MmapWriteGuard<'m> {
    mmu: &'m Mmu,
    // INVARIANT (`OnItsThread`): the token is `!Send` and `!Sync` through `_not_send`.
    _lock: OnItsThread<RwLockWriteGuard<'m, ()>>,
    _not_send: WalkBound,
}

walks!(MmapReadGuard);
walks!(MmapWriteGuard);
