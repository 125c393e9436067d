//! The fault path: `pte_alloc` / `pmd_install` (fill, then publish under the PMD lock) and the
//! faults that use it.

use super::entry::{PmdKind, Pte, TableRef};
use super::frames::FrameKind;
use super::gup::PageRef;
use super::locks::MmapReadGuard;
use super::vma::VmaKind;
use super::{Mmu, PAGE_SIZE};
use crate::error::{Error, NoMap};
use crate::provenance::{
    DetachedPmd, Fresh, InTable, InstallLock, PmdRef, pmd_lock, pte_offset_map, pte_offset_map_lock,
};
use crate::rcu::RcuDomain;
use core::panic::Location;
use std::boxed::Box;
use std::sync::atomic::Ordering;
use std::vec::Vec;

impl Mmu {
    pub(crate) fn table_ref(&self, pfn: u64) -> TableRef {
        TableRef {
            pfn,
            generation: self.frames.desc(pfn).generation.load(Ordering::Acquire),
        }
    }

    /// A fresh table from a reserved frame, or a new one.
    pub(crate) fn fresh_table(
        &self,
        reserve: &mut Vec<u64>,
    ) -> Result<DetachedPmd<'_, Mmu, Fresh>, Error> {
        match reserve.pop() {
            Some(pfn) => {
                // INVARIANT: a reserved frame is zeroed, owned by the caller and reachable by no
                // one, exactly what `pte_alloc_one` hands out.
                self.frames.set_kind(pfn, FrameKind::Pte);
                Ok(DetachedPmd::from_table(self, self.table_ref(pfn)))
            }
            None => DetachedPmd::pte_alloc_one(self),
        }
    }

    /// Returns unused reserved frames.
    pub(crate) fn release(&self, reserve: Vec<u64>) {
        for pfn in reserve {
            self.frames.free(pfn);
        }
    }

    /// Drops references to data pages after a grace period (the TLB flush, then the put).
    pub(crate) fn put_pages_deferred(&self, pfns: Vec<u64>) {
        if pfns.is_empty() {
            return;
        }
        let frames = self.frames.clone();
        self.rcu.call_rcu(Box::new(move || {
            for pfn in pfns {
                frames.put(pfn);
            }
        }));
    }

    /// Installs `table` in the empty slot of `pmd` (`pmd_install`): under the PMD lock, if the
    /// slot is still none; otherwise the loser frees its table at once, since it was never
    /// published. Returns whether this call installed it.
    ///
    /// `mm` is the lock that allows installing (the mmap or a VMA lock); the public entry
    /// point is [`MmapReadGuard::pmd_install`].
    pub(crate) fn pmd_install(
        &self,
        mm: &impl InstallLock<Mmu>,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        table: DetachedPmd<'_, Mmu, Fresh>,
    ) -> bool {
        let pml = pmd_lock(pmd);
        match table.pmd_populate(mm, &pml) {
            Ok(()) => true,
            Err(rejected) => {
                drop(pml);
                rejected.value.pte_free();
                false
            }
        }
    }

    /// `__pte_alloc`: if the slot is none, allocate a zeroed table and install it.
    pub(crate) fn pte_alloc_from(
        &self,
        mm: &impl InstallLock<Mmu>,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        if pmd.pmd_val().kind() == PmdKind::None {
            let table = self.fresh_table(reserve)?;
            self.pmd_install(mm, pmd, table);
        }
        Ok(())
    }

    /// Maps a new data frame at the 4 KiB page `va`, like a fault: under the mmap read lock,
    /// allocating missing tables (a PTE table is filled, then published under the PMD lock; a
    /// loser of the race frees its table at once), then writing the PTE under the PTE lock. In
    /// an anonymous VMA the page is anonymous (and the VMA gets its `anon_vma`). Returns the
    /// frame.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::AlreadyMapped`], [`Error::HugeInTheWay`], or
    /// [`Error::OutOfFrames`]. Errors are detected before anything is changed.
    #[track_caller]
    pub fn map_page(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PAGE_SIZE)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let existing = mm.pmd_offset(va)?;
        let pmd_needs_table = match existing.map(|p| p.pmd_val().kind()) {
            None | Some(PmdKind::None) => true,
            Some(PmdKind::Table(_)) => {
                if let Some(pmd) = existing {
                    if let Ok(map) = pte_offset_map(&pmd, va) {
                        if !map.ptep_get(va).is_none() {
                            return Err(Error::AlreadyMapped { addr: va });
                        }
                    }
                }
                false
            }
            Some(_) => return Err(Error::HugeInTheWay { addr: va }),
        };
        let need = self.missing_upper(va) + usize::from(pmd_needs_table) + 1;
        let mut reserve = self.frames.alloc_n(need, FrameKind::Pte)?;
        let data = reserve.pop().unwrap_or_default();
        self.frames.set_kind(data, FrameKind::Data);
        let pte = match self.vma_at(va) {
            Some(vma) if vma.kind == VmaKind::Anon => {
                self.anon_vma_prepare(&vma);
                Pte::anon_page(data)
            }
            _ => Pte::page(data),
        };
        let result = self.fault_install(&mm, va, pte, &mut reserve);
        self.release(reserve);
        if result.is_err() {
            self.frames.put(data);
        }
        result.map(|()| data)
    }

    /// Maps `count` new pages from `start`, all or nothing: every address is checked and every
    /// frame (tables and data) reserved before anything changes, so a failure, including
    /// running out of frames in the middle of the range, leaves the MMU unchanged. Returns the
    /// frames in address order.
    ///
    /// # Errors
    /// [`Error::EmptyRange`] for `count == 0`; a bad, misaligned or too long range;
    /// [`Error::AlreadyMapped`] or [`Error::HugeInTheWay`] for the first page in the way;
    /// [`Error::OutOfFrames`].
    #[track_caller]
    pub fn map_pages(&self, start: u64, count: usize) -> Result<Vec<u64>, Error> {
        let len = (count as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(Error::OutOfRange {
                addr: start,
                limit: self.cfg.va_limit,
            })?;
        let end = self.check_range(start, len)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let mut tables = std::collections::BTreeSet::new();
        let mut uppers = std::collections::BTreeSet::new();
        let mut va = start;
        while va < end {
            match mm.pmd_offset(va)?.map(|p| p.pmd_val().kind()) {
                None => {
                    tables.insert(va >> 21);
                    uppers.insert(va >> 30);
                    if self.missing_upper(va) == 2 {
                        uppers.insert((va >> 39) | (1 << 63));
                    }
                }
                Some(PmdKind::None) => {
                    tables.insert(va >> 21);
                }
                Some(PmdKind::Table(_)) => {
                    let pmd = mm.pmd_offset(va)?.ok_or(Error::NotMapped { addr: va })?;
                    if let Ok(map) = pte_offset_map(&pmd, va) {
                        if !map.ptep_get(va).is_none() {
                            return Err(Error::AlreadyMapped { addr: va });
                        }
                    }
                }
                Some(_) => return Err(Error::HugeInTheWay { addr: va }),
            }
            va += PAGE_SIZE;
        }
        let mut reserve = self
            .frames
            .alloc_n(tables.len() + uppers.len() + count, FrameKind::Pte)?;
        let data: Vec<u64> = reserve.split_off(reserve.len() - count);
        let mut done = Vec::with_capacity(count);
        let mut failed = None;
        for (i, &pfn) in data.iter().enumerate() {
            let va = start + i as u64 * PAGE_SIZE;
            self.frames.set_kind(pfn, FrameKind::Data);
            let pte = match self.vma_at(va) {
                Some(vma) if vma.kind == VmaKind::Anon => {
                    self.anon_vma_prepare(&vma);
                    Pte::anon_page(pfn)
                }
                _ => Pte::page(pfn),
            };
            match self.fault_install(&mm, va, pte, &mut reserve) {
                Ok(()) => done.push(pfn),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.release(reserve);
        if let Some(e) = failed {
            // Lost a race with another mapper: undo, then report.
            drop(mm);
            for i in 0..done.len() {
                let _ = self.unmap_page(start + i as u64 * PAGE_SIZE);
            }
            for &pfn in &data[done.len()..] {
                self.frames.put(pfn);
            }
            return Err(e);
        }
        Ok(done)
    }

    /// The body of `map_page` once frames are reserved.
    fn fault_install(
        &self,
        mm: &MmapReadGuard<'_>,
        va: u64,
        new: Pte,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let pmd = mm.pmd_alloc_from(va, reserve)?;
        loop {
            match pte_offset_map_lock(&pmd, va) {
                Ok(pte) => {
                    if !pte.ptep_get(va).is_none() {
                        return Err(Error::AlreadyMapped { addr: va });
                    }
                    pte.set_pte(va, new)?;
                    // The entry holds its own reference now; drop the allocation's.
                    self.frames.put(new.pfn().unwrap_or_default());
                    return Ok(());
                }
                // No table, or it was retracted or reclaimed since: allocate one and retry.
                Err(NoMap::None) => self.pte_alloc_from(mm, &pmd, reserve)?,
                Err(_) => return Err(Error::HugeInTheWay { addr: va }),
            }
        }
    }

    /// A write fault on a page of a private file mapping that copies it (CoW): prepares the
    /// VMA's `anon_vma` first, then replaces the file PTE with a new anonymous page under the
    /// PTE lock. Returns the new frame.
    ///
    /// # Errors
    /// [`Error::NotInVma`] outside a file VMA; [`Error::NotMapped`] if no page is mapped there;
    /// [`Error::HugeInTheWay`]; [`Error::OutOfFrames`].
    #[track_caller]
    pub fn cow_fault(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PAGE_SIZE)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let vma = self
            .vma_at(va)
            .filter(|v| v.kind == VmaKind::File)
            .ok_or(Error::NotInVma { addr: va })?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        // Check, then allocate, and only then prepare the anon_vma: a failed fault changes
        // nothing.
        match pte_offset_map(&pmd, va) {
            Ok(map) => {
                let old = map.ptep_get(va);
                if old.pfn().is_none() || old.is_anon() {
                    return Err(Error::NotMapped { addr: va });
                }
            }
            Err(NoMap::None) => return Err(Error::NotMapped { addr: va }),
            Err(_) => return Err(Error::HugeInTheWay { addr: va }),
        }
        let new = self.frames.alloc_n(1, FrameKind::Data)?[0];
        self.anon_vma_prepare(&vma);
        let pte = match pte_offset_map_lock(&pmd, va) {
            Ok(pte) => pte,
            Err(e) => {
                self.frames.put(new);
                return Err(match e {
                    NoMap::None => Error::NotMapped { addr: va },
                    _ => Error::HugeInTheWay { addr: va },
                });
            }
        };
        let old = pte.ptep_get(va);
        if old.pfn().is_none() || old.is_anon() {
            drop(pte);
            self.frames.put(new);
            return Err(Error::NotMapped { addr: va });
        }
        // The entry takes a reference to the new page and drops the old one's after a grace
        // period; then the allocation's reference goes.
        let written = pte.set_pte(va, Pte::anon_page(new));
        drop(pte);
        self.frames.put(new);
        written.map(|()| new)
    }

    /// Takes a reference to the data page `pfn` unless it has none left (`folio_try_get`), as
    /// GUP-fast does before it rechecks the entries it read. `None` for anything but a data
    /// page in use (a free frame, a page table, a frame out of range). Dropping the reference
    /// puts it (`folio_put`).
    pub fn try_get_page(&self, pfn: u64) -> Option<PageRef<'_>> {
        self.frames.try_get(pfn).then(|| PageRef::new(self, pfn))
    }

    /// Fault injection: drops one reference to the data page `pfn` that no [`PageRef`] holds
    /// (the reference of a mapping replaced with [`Mmu::inject_pmd`]). Returns `false`, and
    /// changes nothing, for a frame that is not a data page with references: a put never
    /// frees a page table.
    ///
    /// # Safety
    /// The caller gives up a reference it accounts for itself; a put of a reference that a
    /// mapping or a `PageRef` still holds frees a page that is still in use.
    pub unsafe fn put_page(&self, pfn: u64) -> bool {
        self.frames.put(pfn)
    }

    /// The reference count of a frame (0 for frames that are not data pages in use).
    pub fn page_refs(&self, pfn: u64) -> u32 {
        if pfn as usize >= self.frames.nframes() {
            return 0;
        }
        self.frames.refs(pfn)
    }
}

impl<'m> MmapReadGuard<'m> {
    /// Allocates and installs a PTE table at `va` if the slot is none (`pte_alloc`), allocating
    /// missing upper levels too. Needs a lock that allows installing: the mmap lock. Every
    /// frame is reserved first, so a failure changes nothing.
    ///
    /// # Errors
    /// A bad address; [`Error::OutOfFrames`].
    pub fn pte_alloc(&self, va: u64) -> Result<PmdRef<'m, '_, Mmu, InTable>, Error> {
        let mmu = self.mmu();
        mmu.check_va(va, 1)?;
        let needs_table = match self.pmd_offset(va)? {
            None => true,
            Some(pmd) => pmd.pmd_val().kind() == PmdKind::None,
        };
        let need = mmu.missing_upper(va) + usize::from(needs_table);
        let mut reserve = mmu.frames.alloc_n(need, FrameKind::Pte)?;
        let result = self.pmd_alloc_from(va, &mut reserve).and_then(|pmd| {
            mmu.pte_alloc_from(self, &pmd, &mut reserve)?;
            Ok(pmd)
        });
        mmu.release(reserve);
        result
    }

    /// Installs `table` in the empty slot of `pmd` (`pmd_install`): under the PMD lock, if the
    /// slot is still none; otherwise the loser frees its table at once, since it was never
    /// published. Returns whether this call installed it. A method of the mmap lock because
    /// installing needs the mmap or VMA lock, never the rmap lock alone (rule I7).
    pub fn pmd_install(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        table: DetachedPmd<'_, Mmu, Fresh>,
    ) -> bool {
        self.mmu().pmd_install(self, pmd, table)
    }
}
