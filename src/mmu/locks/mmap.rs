//! The mmap lock (`mmap_lock`): [`MmapReadGuard`] and [`MmapWriteGuard`], the walk locks of
//! faults, zaps and khugepaged's walks. Either mode allows installs.

use crate::bound::{OnItsThread, WalkBound};
use crate::error::Error;
use crate::mmu::Mmu;
use crate::mmu::frames::{FrameKind, PmdSlot};
use crate::mmu::lockdep::{self, LockClass};
use crate::provenance::{InTable, InstallLock, PmdRef, WalkLock};
use core::marker::PhantomData;
use core::panic::Location;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;

impl Mmu {
    /// Takes the mmap lock for reading (`mmap_read_lock`).
    ///
    /// # Panics
    /// With the lock checker's report if the call could deadlock: inside an RCU read section
    /// of this MMU, with the mmap lock already held, or after a lock that comes later in the
    /// order (see [`lockdep`]).
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

    /// `mmap_read_lock`, checked: the lock checker's report as an error.
    pub(crate) fn mmap_read_lock_at(
        &self,
        at: &'static Location<'static>,
    ) -> Result<MmapReadGuard<'_>, Error> {
        let lock = self.take_checked(LockClass::Mmap, at, || {
            self.mmap_lock.read().unwrap_or_else(|e| e.into_inner())
        })?;
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
        let lock = self.take_checked(LockClass::Mmap, at, || {
            self.mmap_lock.write().unwrap_or_else(|e| e.into_inner())
        })?;
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
