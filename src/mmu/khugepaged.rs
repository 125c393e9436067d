//! khugepaged: retracting PTE tables of file mappings, and collapsing PTE-mapped ranges into
//! huge pmds.
//!
//! The three removers differ in the locks they hold and in what becomes of the table:
//!
//! | operation | walk lock | removal | the table afterwards |
//! |---|---|---|---|
//! | [`Mmu::retract_page_tables`] | rmap read only | PMD lock, PTE lock, recheck, `pmdp_collapse_flush` | `pte_free_defer` |
//! | [`Mmu::collapse_pte_mapped_thp`] | mmap read | `rw_nolock` + typed `pmd_same`, then PMD + PTE lock | `pte_free_defer` |
//! | [`Mmu::collapse_huge_page`] | mmap write + VMA write | PMD + PTE lock, `pmdp_collapse_flush` | synced, then reused: deposited (or repopulated on failure) |

use super::delay::Window;
use super::entry::huge_entry;
use super::vma::VmaKind;
use super::{Mmu, PMD_SIZE};
use crate::error::{Error, NoMap};
use crate::ops::detach_pte_table;
use crate::provenance::{
    Attached, DetachedPmd, InTable, PmdRef, PteLocked, Retired, pmd_lock, pmdp_collapse_flush,
    pte_offset_map, pte_offset_map_lock, pte_offset_map_rw_nolock,
};
use core::panic::Location;
use std::sync::atomic::Ordering;

/// What a collapse did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollapseOutcome {
    /// The range is now mapped by a huge pmd.
    Collapsed,
    /// The PTE table was removed; no huge page could be allocated, so the range faults back in.
    TableRemoved,
    /// Nothing changed: the pmd changed under us, or the range is not collapsible.
    Aborted,
}

impl Mmu {
    /// Frees a detached table (retraction, `free_pgtables`): check it
    /// (`page_table_check_pte_clear_range`, case 1), count the anonymous pages it still maps
    /// as lost, `pte_free_defer` (which drops the references of the pages still mapped, after
    /// the grace period). Returns the number of pages it still mapped.
    pub(crate) fn free_retired(&self, table: DetachedPmd<'_, Mmu, Retired>, haddr: u64) -> usize {
        let report = super::check::page_table_check_pte_clear_range(self, haddr, &table.pmd());
        let pages = pte_offset_map(&table.pmd(), haddr).map_or(0, |map| {
            map.entries()
                .filter(|p| p.pfn().is_some() && !p.is_special())
                .count()
        });
        self.counters
            .anon_pages_lost
            .fetch_add(report.anon as u64, Ordering::Relaxed);
        table.pte_free_defer();
        pages
    }

    /// Retracts the PTE table covering `va` under the mmap read lock, whatever maps it: PMD
    /// lock, then `pte_offset_map_lock` (recheck), `pmdp_collapse_flush`, then the data pages
    /// and the table go after a grace period. Returns the number of pages it mapped. A simple
    /// remover for tests and the torture run; see [`Mmu::retract_page_tables`] for khugepaged's.
    ///
    /// # Errors
    /// A bad address, [`Error::NotMapped`] if no PTE table is there, [`Error::HugeInTheWay`].
    #[track_caller]
    pub fn retract_pte_table(&self, va: u64) -> Result<usize, Error> {
        let haddr = va & !(PMD_SIZE - 1);
        self.check_va(va, 1)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let table = self.detach_locked(&pmd, va, |_, _| true)?;
        self.counters.retracts.fetch_add(1, Ordering::Relaxed);
        Ok(self.free_retired(table, haddr))
    }

    /// PMD lock, recheck the pmd names a table, PTE lock, `recheck` under both locks, detach:
    /// the generic [`detach_pte_table`], with the MMU's names for its refusals.
    fn detach_locked<'m>(
        &self,
        pmd: &PmdRef<'m, '_, Mmu, InTable>,
        va: u64,
        recheck: impl FnOnce(&Self, &PteLocked<'_, Mmu, Attached>) -> bool,
    ) -> Result<DetachedPmd<'m, Mmu, Retired>, Error> {
        detach_pte_table(pmd, va, |ptl| recheck(self, ptl)).map_err(|e| match e {
            Error::NoTable(NoMap::Huge) => Error::HugeInTheWay { addr: va },
            Error::NoTable(_) => Error::NotMapped { addr: va },
            e => e,
        })
    }

    /// khugepaged's `retract_page_tables` for the 2 MiB range at `va`: for each file VMA linked
    /// into the rmap that covers the range, under the rmap read lock **only**: skip it if it
    /// has an `anon_vma`, take the PMD lock, recheck that the pmd still names a table (B10),
    /// take the PTE lock, recheck `anon_vma` under both locks (B4) and, a second layer, that the
    /// table maps no anonymous page (a table moved in from an anonymous range by hand), detach
    /// with `pmdp_collapse_flush`, check the detached table and free it after a grace period.
    /// Returns the number of tables retracted.
    ///
    /// # Errors
    /// A bad address.
    #[track_caller]
    pub fn retract_page_tables(&self, va: u64) -> Result<usize, Error> {
        let haddr = va & !(PMD_SIZE - 1);
        self.check_va(va, 1)?;
        let rmap = self.i_mmap_lock_read_at(Location::caller())?;
        let mut retracted = 0;
        for vma in rmap.file_vmas() {
            if vma.start > haddr || vma.end < haddr + PMD_SIZE || vma.anon_vma {
                continue;
            }
            self.race_window(Window::RetractAnonVma);
            let Ok(Some(pmd)) = rmap.pmd_offset(haddr) else {
                continue;
            };
            // Under both locks: the VMA still has no anon_vma (B4), and, a second layer, the
            // table holds no anonymous page (one moved in from elsewhere): such a table stays.
            let still_retractable = |mmu: &Mmu, ptl: &PteLocked<'_, Mmu, Attached>| {
                mmu.vma_at(haddr)
                    .is_some_and(|v| !v.anon_vma.load(Ordering::Acquire))
                    && !ptl.entries().any(|p| p.is_present() && p.is_anon())
            };
            if let Ok(table) = self.detach_locked(&pmd, haddr, still_retractable) {
                self.free_retired(table, haddr);
                self.counters.retracts.fetch_add(1, Ordering::Relaxed);
                retracted += 1;
            }
        }
        Ok(retracted)
    }

    /// khugepaged's `collapse_pte_mapped_thp` for the 2 MiB range at `va` of a file VMA, under
    /// the mmap read lock and the PMD lock: map with `pte_offset_map_rw_nolock`, lock,
    /// **revalidate with `pmd_same` before any write** (the typed `Unverified` → `Attached`
    /// step), clear the PTEs, detach the table (`pmdp_collapse_flush`), free it after a grace
    /// period, and map a huge page if one can be allocated.
    ///
    /// Only ranges of a file VMA that map file pages (and holes) collapse: an anonymous page
    /// would be lost. Anything else is `Aborted`.
    ///
    /// # Errors
    /// A bad address.
    #[track_caller]
    pub fn collapse_pte_mapped_thp(&self, va: u64) -> Result<CollapseOutcome, Error> {
        let haddr = va & !(PMD_SIZE - 1);
        self.check_va(va, 1)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let file = self.vma_at(haddr).is_some_and(|v| {
            v.kind == VmaKind::File && v.start <= haddr && haddr + PMD_SIZE <= v.end
        });
        let Some(pmd) = mm.pmd_offset(haddr)?.filter(|_| file) else {
            return Ok(CollapseOutcome::Aborted);
        };
        // The PMD lock is taken first and held to the end, as the kernel does when faults can
        // refill PTEs without the folio lock (here every fault can): no PTE can be refilled
        // between clearing it and detaching the table.
        self.race_window(Window::CollapseFile);
        let pml = pmd_lock(&pmd);
        // Step 2: rw_nolock, lock, pmd_same before any write, clear.
        let Ok(nolock) = pte_offset_map_rw_nolock(&pmd, haddr) else {
            return Ok(CollapseOutcome::Aborted);
        };
        let Ok(ptl) = nolock.lock().revalidate(&pmd) else {
            return Ok(CollapseOutcome::Aborted);
        };
        // Only file pages (or holes) collapse: an anonymous page would be lost.
        let collapsible = ptl
            .entries()
            .all(|p| p.is_none() || (p.is_present() && !p.is_anon() && !p.is_special()));
        if !collapsible || ptl.entries().all(|p| p.is_none()) {
            return Ok(CollapseOutcome::Aborted);
        }
        // Each clear drops its page's reference after a grace period (no page cache here).
        for i in 0..super::ENTRIES as u64 {
            ptl.ptep_get_and_clear(haddr + i * super::PAGE_SIZE);
        }
        // Step 4: detach (the PTE lock is still held and revalidated).
        let Ok(table) = pmdp_collapse_flush(&pml, ptl) else {
            return Ok(CollapseOutcome::Aborted);
        };
        // Step 5: map the huge page, if there is memory for it: the entry, then its deposit.
        let outcome = match (self.frames.alloc_huge(), DetachedPmd::pte_alloc_one(self)) {
            (Ok(huge), Ok(deposit)) => {
                pmd.slot().0.store(huge_entry(huge), Ordering::Release);
                match deposit.pgtable_trans_huge_deposit(&pml) {
                    Ok(()) => {
                        self.counters.collapses.fetch_add(1, Ordering::Relaxed);
                        CollapseOutcome::Collapsed
                    }
                    Err(r) => {
                        pmd.slot().0.store(0, Ordering::Release);
                        r.value.pte_free();
                        self.frames.put(huge);
                        CollapseOutcome::TableRemoved
                    }
                }
            }
            (huge, deposit) => {
                if let Ok(h) = huge {
                    self.frames.put(h);
                }
                if let Ok(d) = deposit {
                    d.pte_free();
                }
                CollapseOutcome::TableRemoved
            }
        };
        drop(pml);
        self.free_retired(table, haddr);
        Ok(outcome)
    }

    /// khugepaged's anonymous `collapse_huge_page` for the 2 MiB range at `va`: mmap write
    /// lock, **`vma_start_write` before checking the pmd** (B11: PT_RECLAIM runs under the VMA
    /// read lock, which the mmap write lock alone does not exclude), PMD and PTE lock, detach.
    /// The table is then reused, not freed, so lockless walkers must be gone first:
    /// `tlb_remove_table_sync_one` (one grace period) turns it `Fresh`. Its PTEs are read
    /// through the owned map (case 1); on success they are cleared and the table is deposited
    /// under the new huge pmd; on failure (no huge page) it is populated back unchanged.
    ///
    /// Blocks for a grace period: do not call it inside an RCU read section of this MMU.
    ///
    /// # Errors
    /// [`Error::NotInVma`] unless an anonymous VMA covers the range; [`Error::NotMapped`] if
    /// no PTE table is there; [`Error::OutOfFrames`] (the table is restored).
    #[track_caller]
    pub fn collapse_huge_page(&self, va: u64) -> Result<CollapseOutcome, Error> {
        let haddr = va & !(PMD_SIZE - 1);
        self.check_va(va, 1)?;
        let mm = self.mmap_write_lock_at(Location::caller())?;
        let vma = self
            .vma_at(haddr)
            .filter(|v| v.kind == VmaKind::Anon && v.start <= haddr && haddr + PMD_SIZE <= v.end)
            .ok_or(Error::NotInVma { addr: va })?;
        let vw = mm
            .vma_start_write_at(vma.start, Location::caller())?
            .ok_or(Error::NotInVma { addr: va })?;
        // check_pmd_still_valid, now that every walker and remover is excluded.
        let Some(pmd) = vw.pmd_offset(haddr)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let pml = pmd_lock(&pmd);
        let ptl = match pte_offset_map_lock(&pmd, haddr) {
            Ok(ptl) => ptl,
            Err(NoMap::Huge) => return Ok(CollapseOutcome::Aborted),
            Err(_) => return Err(Error::NotMapped { addr: va }),
        };
        let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error)?;
        drop(pml);
        // Reuse needs every lockless walker gone.
        let table = table.tlb_remove_table_sync_one();
        let huge = match self.frames.alloc_huge() {
            Ok(h) => h,
            Err(e) => {
                let pml = pmd_lock(&pmd);
                if let Err(r) = table.pmd_populate(&mm, &pml) {
                    drop(pml);
                    r.value.pte_free_defer();
                }
                return Err(e);
            }
        };
        // Copy (here: take) the pages through the owned, locked map of the detached table; each
        // clear drops its page's reference after a grace period.
        {
            let owned = table.pmd();
            let ptl =
                pte_offset_map_lock(&owned, haddr).map_err(|_| Error::NotMapped { addr: va })?;
            for i in 0..super::ENTRIES {
                ptl.ptep_get_and_clear(haddr + (i as u64) * super::PAGE_SIZE);
            }
        }
        let pml = pmd_lock(&pmd);
        pmd.slot().0.store(huge_entry(huge), Ordering::Release);
        if let Err(r) = table.pgtable_trans_huge_deposit(&pml) {
            r.value.pte_free();
        }
        drop(pml);
        self.counters.collapses.fetch_add(1, Ordering::Relaxed);
        Ok(CollapseOutcome::Collapsed)
    }
}
