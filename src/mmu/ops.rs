//! The operations of this issue's MMU, each written through the typed API.

use super::entry::{PmdKind, Pte, huge_entry};
use super::frames::{ENTRIES, FrameKind};
use super::{Mmu, PAGE_SIZE, PMD_SIZE};
use crate::error::{Error, NoMap};
use crate::provenance::{
    CopiedUnderRcu, DetachedPmd, InTable, PgtableBackend, PmdLockGuard, PmdRef, Unprotected,
    pmd_lock, pmdp_collapse_flush, pte_offset_map, pte_offset_map_lock,
};
use crate::rcu::{EpochRcu, RcuGuard};
use std::boxed::Box;
use std::sync::atomic::Ordering;
use std::vec::Vec;

/// Counters of an [`Mmu`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmuStats {
    /// PTE tables published into a slot.
    pub tables_installed: u64,
    /// PTE tables freed at once (never visible to walkers).
    pub tables_freed_now: u64,
    /// PTE tables handed to `pte_free_defer`.
    pub tables_freed_deferred: u64,
    /// Tables retracted by [`Mmu::retract_pte_table`].
    pub retracts: u64,
    /// Frames free now.
    pub free_frames: usize,
}

/// Everything observable of an MMU's state, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmuDump {
    /// Every non-empty entry reachable from the root: (level, index path as an address, raw).
    pub entries: Vec<(u32, u64, u64)>,
    /// Deposited tables: (pmd table frame, slot index, table frame).
    pub deposits: Vec<(u64, u16, u64)>,
    /// Frames free.
    pub free_frames: usize,
}

impl Mmu {
    /// The counters.
    pub fn stats(&self) -> MmuStats {
        let c = &self.counters;
        MmuStats {
            tables_installed: c.tables_installed.load(Ordering::Relaxed),
            tables_freed_now: c.tables_freed_now.load(Ordering::Relaxed),
            tables_freed_deferred: c.tables_freed_deferred.load(Ordering::Relaxed),
            retracts: c.retracts.load(Ordering::Relaxed),
            free_frames: self.free_frames(),
        }
    }

    /// Copies the pmd for `va` in a lockless walk inside `guard`'s read section (GUP-fast's
    /// `pmdp_get_lockless`, case 2). `None` if an upper level is missing.
    ///
    /// # Errors
    /// [`Error::WrongMmu`] if `guard` is a section of another MMU's domain; a bad address.
    pub fn pmd_copy_lockless<'g>(
        &'g self,
        guard: &'g RcuGuard<'_, EpochRcu>,
        va: u64,
    ) -> Result<Option<PmdRef<'g, Mmu, CopiedUnderRcu<'g>>>, Error> {
        if !core::ptr::eq(guard.domain(), &self.rcu) {
            return Err(Error::WrongMmu);
        }
        self.check_va(va & !(PAGE_SIZE - 1), 1)?;
        Ok(self.pmd_slot(va).map(|slot| {
            let value = self.pmdp_get_lockless(slot);
            // SAFETY: `guard` is an open section of this MMU's domain (checked above), opened
            // before this read, and lives for 'g; the slot's table is never freed while the
            // MMU lives.
            unsafe { PmdRef::from_copy(self, slot, value) }
        }))
    }

    /// Reads the pmd for `va` and keeps the value with **no** proof, the way buggy code keeps
    /// a pmd after its protection ended. Mapping it needs the `unsafe`
    /// [`pte_offset_map_unprotected`](crate::provenance::pte_offset_map_unprotected).
    ///
    /// # Errors
    /// A bad address.
    pub fn pmd_read_unprotected(
        &self,
        va: u64,
    ) -> Result<Option<PmdRef<'_, Mmu, Unprotected>>, Error> {
        let guard = self.rcu_read_lock();
        Ok(self
            .pmd_copy_lockless(&guard, va)?
            .map(|copy| PmdRef::unprotected(self, copy.pmd_val())))
    }

    /// Translates a virtual address like the hardware walker: a lockless walk inside an RCU
    /// read section. `None` if nothing is mapped.
    ///
    /// # Errors
    /// [`Error::NonCanonical`] or [`Error::OutOfRange`].
    pub fn translate(&self, va: u64) -> Result<Option<u64>, Error> {
        self.check_va(va & !(PAGE_SIZE - 1), 1)?;
        let guard = self.rcu_read_lock();
        let Some(pmd) = self.pmd_copy_lockless(&guard, va)? else {
            return Ok(None);
        };
        if let PmdKind::Huge(pfn) = pmd.pmd_val().kind() {
            return Ok(Some((pfn << 12) + (va & (PMD_SIZE - 1))));
        }
        let Ok(map) = pte_offset_map(&pmd, va) else {
            return Ok(None);
        };
        Ok(map
            .ptep_get(va)
            .pfn()
            .map(|pfn| (pfn << 12) | (va & (PAGE_SIZE - 1))))
    }

    /// Maps a new data frame at the 4 KiB page `va`, like an anonymous fault: under the mmap
    /// read lock, allocating missing tables (a PTE table is filled, then published under the
    /// PMD lock; a loser of the race frees its table at once), then writing the PTE under the
    /// PTE lock. Returns the frame.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::AlreadyMapped`], [`Error::HugeInTheWay`], or
    /// [`Error::OutOfFrames`]. Errors are detected before anything is changed.
    pub fn map_page(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PAGE_SIZE)?;
        let mm = self.mmap_read_lock();
        let existing = mm.pmd_offset(va)?;
        let pmd_needs_table = match existing.map(|p| p.pmd_val().kind()) {
            None | Some(PmdKind::None) => true,
            Some(PmdKind::Huge(_)) => return Err(Error::HugeInTheWay { addr: va }),
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
        let result = self.fault_install(&mm, va, data, &mut reserve);
        for pfn in reserve {
            self.frames.free(pfn);
        }
        if result.is_err() {
            self.frames.free(data);
        }
        result.map(|()| data)
    }

    /// The body of `map_page` once frames are reserved.
    fn fault_install(
        &self,
        mm: &super::MmapReadGuard<'_>,
        va: u64,
        data: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let pmd = self.pmd_slot_alloc(va, reserve)?;
        // SAFETY: the slot is in a PMD table of this MMU and the mmap read lock is held.
        let pmd = unsafe { PmdRef::<Mmu, InTable>::from_slot(mm.mmu(), pmd) };
        loop {
            match pte_offset_map_lock(&pmd, va) {
                Ok(pte) => {
                    if !pte.ptep_get(va).is_none() {
                        return Err(Error::AlreadyMapped { addr: va });
                    }
                    pte.set_pte(va, Pte::page(data));
                    return Ok(());
                }
                Err(NoMap::None) => self.pte_alloc(&pmd, reserve)?,
                Err(NoMap::Huge) => return Err(Error::HugeInTheWay { addr: va }),
                Err(_) => return Err(Error::HugeInTheWay { addr: va }),
            }
        }
    }

    /// `__pte_alloc`: a fresh zeroed table, published under the PMD lock if the slot is still
    /// empty, freed at once otherwise (it was never visible).
    fn pte_alloc(
        &self,
        pmd: &PmdRef<'_, Mmu, InTable>,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let table = match reserve.pop() {
            Some(pfn) => {
                self.frames.set_kind(pfn, FrameKind::Pte);
                // SAFETY: a reserved frame is zeroed, owned by us and reachable by no one.
                match unsafe {
                    DetachedPmd::from_pmd(self, self.pmd_of_table(&self.table_ref(pfn)))
                } {
                    Ok(t) => t,
                    Err(_) => {
                        return Err(Error::InvalidConfig {
                            reason: "reserved frame is not a table",
                        });
                    }
                }
            }
            None => DetachedPmd::pte_alloc_one(self)?,
        };
        let pml = pmd_lock(pmd);
        if let Err(rejected) = table.pmd_populate(&pml) {
            // Lost the race (`pmd_install` found the slot populated): never published.
            rejected.value.pte_free();
        }
        Ok(())
    }

    pub(crate) fn table_ref(&self, pfn: u64) -> super::TableRef {
        super::TableRef {
            pfn,
            generation: self.frames.desc(pfn).generation.load(Ordering::Acquire),
        }
    }

    /// Unmaps the 4 KiB page at `va` (a zap under the mmap read lock); the data frame is freed
    /// after a grace period. Returns the frame. The PTE table stays.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::NotMapped`], [`Error::HugeInTheWay`].
    pub fn unmap_page(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PAGE_SIZE)?;
        let mm = self.mmap_read_lock();
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let pte = match pte_offset_map_lock(&pmd, va) {
            Ok(pte) => pte,
            Err(NoMap::Huge) => return Err(Error::HugeInTheWay { addr: va }),
            Err(_) => return Err(Error::NotMapped { addr: va }),
        };
        let Some(pfn) = pte.ptep_get(va).pfn() else {
            return Err(Error::NotMapped { addr: va });
        };
        pte.ptep_get_and_clear(va);
        drop(pte);
        self.free_data_deferred(Box::new([pfn]), false);
        Ok(pfn)
    }

    pub(crate) fn free_data_deferred(&self, pfns: Box<[u64]>, huge: bool) {
        let frames = self.frames.clone();
        crate::rcu::RcuDomain::call_rcu(
            &self.rcu,
            Box::new(move || {
                for &pfn in pfns.iter() {
                    if huge {
                        frames.free_huge(pfn);
                    } else {
                        frames.free(pfn);
                    }
                }
            }),
        );
    }

    /// Maps a 2 MiB page at `va` with a deposited PTE table (a THP fault). Returns the first
    /// of its 512 frames.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::AlreadyMapped`] (a huge page is there),
    /// [`Error::TableInTheWay`] (a PTE table is there), [`Error::OutOfFrames`].
    pub fn map_huge(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PMD_SIZE)?;
        let mm = self.mmap_read_lock();
        match mm.pmd_offset(va)?.map(|p| p.pmd_val().kind()) {
            None | Some(PmdKind::None) => {}
            Some(PmdKind::Huge(_)) => return Err(Error::AlreadyMapped { addr: va }),
            Some(_) => return Err(Error::TableInTheWay { addr: va }),
        }
        let mut reserve = self
            .frames
            .alloc_n(self.missing_upper(va) + 1, FrameKind::Pte)?;
        let data = match self.frames.alloc_huge() {
            Ok(d) => d,
            Err(e) => {
                for pfn in reserve {
                    self.frames.free(pfn);
                }
                return Err(e);
            }
        };
        let result = self.install_huge(&mm, va, data, &mut reserve);
        for pfn in reserve {
            self.frames.free(pfn);
        }
        if result.is_err() {
            self.frames.free_huge(data);
        }
        result.map(|()| data)
    }

    fn install_huge(
        &self,
        mm: &super::MmapReadGuard<'_>,
        va: u64,
        data: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let deposit = reserve.pop().unwrap_or_default();
        let pmd = mm.pmd_alloc_from(va, reserve)?;
        let pml = pmd_lock(&pmd);
        match pml.pmdp_get().kind() {
            PmdKind::None => {}
            PmdKind::Huge(_) => {
                reserve.push(deposit);
                return Err(Error::AlreadyMapped { addr: va });
            }
            _ => {
                reserve.push(deposit);
                return Err(Error::TableInTheWay { addr: va });
            }
        }
        self.frames.set_kind(deposit, FrameKind::Pte);
        // SAFETY: a reserved frame is zeroed, owned by us and reachable by no one.
        let table =
            unsafe { DetachedPmd::from_pmd(self, self.pmd_of_table(&self.table_ref(deposit))) }
                .map_err(|_| Error::InvalidConfig {
                    reason: "reserved frame is not a table",
                })?;
        if let Err(r) = table.pgtable_trans_huge_deposit(&pml) {
            r.value.pte_free();
            return Err(r.error);
        }
        set_pmd_huge(&pml, data);
        Ok(())
    }

    /// Unmaps the 2 MiB page at `va`: clears the huge pmd under the PMD lock, frees the
    /// deposited table at once (`zap_deposited_table`: it was never visible) and the data after
    /// a grace period. Returns the first frame.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::NotMapped`], [`Error::TableInTheWay`] (4 KiB
    /// pages are mapped there).
    pub fn unmap_huge(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PMD_SIZE)?;
        let mm = self.mmap_read_lock();
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let pml = pmd_lock(&pmd);
        let pfn = match pml.pmdp_get().kind() {
            PmdKind::Huge(pfn) => pfn,
            PmdKind::None => return Err(Error::NotMapped { addr: va }),
            _ => return Err(Error::TableInTheWay { addr: va }),
        };
        pmd.slot().0.store(0, Ordering::Release);
        if let Some(table) = DetachedPmd::pgtable_trans_huge_withdraw(&pml) {
            table.pte_free();
        }
        drop(pml);
        self.free_data_deferred(Box::new([pfn]), true);
        Ok(pfn)
    }

    /// Retracts the PTE table covering `va` (khugepaged-style): PMD lock, then the table's
    /// PTE lock with the `pmd_same` recheck, detach (`pmdp_collapse_flush`), then frees the data
    /// pages it mapped and the table after a grace period. Returns the number of pages it
    /// mapped.
    ///
    /// # Errors
    /// A bad address, [`Error::NotMapped`] if no PTE table is there, [`Error::HugeInTheWay`].
    pub fn retract_pte_table(&self, va: u64) -> Result<usize, Error> {
        self.check_va(va & !(PMD_SIZE - 1), 1)?;
        let mm = self.mmap_read_lock();
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let pml = pmd_lock(&pmd);
        let ptl = match pte_offset_map_lock(&pmd, va) {
            Ok(ptl) => ptl,
            Err(NoMap::Huge) => return Err(Error::HugeInTheWay { addr: va }),
            Err(_) => return Err(Error::NotMapped { addr: va }),
        };
        let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error)?;
        drop(pml);
        // Case 1: read the detached table we own (page_table_check's clear range).
        let pages: Vec<u64> = match pte_offset_map(&table.pmd(), va) {
            Ok(map) => map.entries().filter_map(|p| p.pfn()).collect(),
            Err(_) => Vec::new(),
        };
        let n = pages.len();
        self.free_data_deferred(pages.into_boxed_slice(), false);
        table.pte_free_defer();
        self.counters.retracts.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Fault injection: writes `raw` into the pmd slot for `va` under the mmap write lock and
    /// the PMD lock, and returns the old value. Use it to place migration, non-present or
    /// malformed entries that the map functions must classify as "nomap". A PTE table that the
    /// old value named is leaked (its frame stays allocated), never freed under a walker.
    ///
    /// # Errors
    /// A bad address, or [`Error::NotMapped`] if the upper levels for `va` do not exist.
    ///
    /// ```
    /// use typed_pgtable::mmu::{migration_entry, Mmu, MmuConfig};
    /// use typed_pgtable::provenance::pte_offset_map;
    /// use typed_pgtable::NoMap;
    ///
    /// let mmu = Mmu::new(MmuConfig::default())?;
    /// mmu.map_huge(0x20_0000)?;
    /// mmu.inject_pmd(0x20_0000, migration_entry(7))?;
    /// let mm = mmu.mmap_read_lock();
    /// let pmd = mm.pmd_offset(0x20_0000)?.unwrap();
    /// assert_eq!(pte_offset_map(&pmd, 0x20_0000).err(), Some(NoMap::Migration));
    /// # Ok::<(), typed_pgtable::Error>(())
    /// ```
    pub fn inject_pmd(&self, va: u64, raw: u64) -> Result<u64, Error> {
        self.check_va(va & !(PAGE_SIZE - 1), 1)?;
        let mm = self.mmap_write_lock();
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let _pml = pmd_lock(&pmd);
        Ok(pmd.slot().0.swap(raw, Ordering::AcqRel))
    }

    /// A full dump of the page tables, deposits and the free-frame count (under the mmap
    /// write lock). Two equal dumps mean the MMU is in the same state.
    pub fn dump(&self) -> MmuDump {
        let _mm = self.mmap_write_lock();
        let mut entries = Vec::new();
        let mut deposits = Vec::new();
        self.dump_table(self.root, 4, 0, &mut entries, &mut deposits);
        MmuDump {
            entries,
            deposits,
            free_frames: self.free_frames(),
        }
    }

    fn dump_table(
        &self,
        pfn: u64,
        level: u32,
        base: u64,
        out: &mut Vec<(u32, u64, u64)>,
        deposits: &mut Vec<(u64, u16, u64)>,
    ) {
        if level == 2 {
            let dep = self
                .frames
                .desc(pfn)
                .deposit
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            deposits.extend(dep.iter().map(|&(i, t)| (pfn, i, t)));
        }
        for i in 0..ENTRIES {
            let raw = self.frames.cell(pfn, i).0.load(Ordering::Acquire);
            if raw == 0 {
                continue;
            }
            let va = base | ((i as u64) << (12 + 9 * (level - 1)));
            out.push((level, va, raw));
            if level > 1 {
                if let PmdKind::Table(next) = self.snapshot(raw).kind() {
                    self.dump_table(next, level - 1, va, out, deposits);
                }
            }
        }
    }
}

/// Writes a huge pmd into the locked, empty slot (`set_pmd_at`).
fn set_pmd_huge(pml: &PmdLockGuard<'_, Mmu>, pfn: u64) {
    pml.pmd().slot().0.store(huge_entry(pfn), Ordering::Release);
}

impl<'m> super::MmapReadGuard<'m> {
    /// `pmd_alloc` drawing new upper-level tables from a reservation.
    pub(crate) fn pmd_alloc_from(
        &self,
        va: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<PmdRef<'_, Mmu, InTable>, Error> {
        let slot = self.mmu().pmd_slot_alloc(va, reserve)?;
        // SAFETY: the slot is in a PMD table of this MMU and this mmap read lock is held.
        Ok(unsafe { PmdRef::from_slot(self.mmu(), slot) })
    }
}
