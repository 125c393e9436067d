//! Zapping: unmapping pages under a walk lock, and PT_RECLAIM, the freeing of PTE tables that
//! a zap left empty while other threads hold only the mmap or VMA read lock.

use super::entry::PmdKind;
use super::{Mmu, PAGE_SIZE, PMD_SIZE};
use crate::error::{Error, NoMap};
use crate::provenance::{
    Attached, InTable, PmdLockGuard, PmdRef, PteLocked, pmd_lock, pmd_trylock, pmdp_collapse_flush,
    pte_offset_map_lock,
};
use core::panic::Location;
use std::sync::atomic::Ordering;

/// What a zap did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZapStats {
    /// 4 KiB pages unmapped.
    pub pages: u64,
    /// Huge pmds unmapped.
    pub huge: u64,
    /// Empty PTE tables freed (PT_RECLAIM).
    pub tables_reclaimed: u64,
}

impl Mmu {
    /// Unmaps the 4 KiB page at `va` (a zap under the mmap read lock); the data frame is freed
    /// after a grace period. Returns the frame. The PTE table stays.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::NotMapped`], [`Error::HugeInTheWay`].
    #[track_caller]
    pub fn unmap_page(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PAGE_SIZE)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let pte = match pte_offset_map_lock(&pmd, va) {
            Ok(pte) => pte,
            Err(NoMap::Huge) => return Err(Error::HugeInTheWay { addr: va }),
            Err(_) => return Err(Error::NotMapped { addr: va }),
        };
        let old = pte.ptep_get(va);
        let Some(pfn) = old.pfn() else {
            return Err(Error::NotMapped { addr: va });
        };
        // The clear drops the entry's page reference after a grace period.
        pte.ptep_get_and_clear(va);
        Ok(pfn)
    }

    /// `MADV_DONTNEED` over `[start, start + len)`: zaps every mapping in the range and, with
    /// `reclaim`, frees PTE tables the zap left empty (PT_RECLAIM). Runs under the VMA read
    /// lock when one VMA covers the range (`lock_vma_under_rcu`), else under the mmap read lock;
    /// either way other threads may walk the same tables meanwhile.
    ///
    /// PT_RECLAIM, fast path: still holding the PTE lock of the empty table, *try* the PMD lock
    /// (the order is inverted, so it must not block), then detach and free after a grace
    /// period. Slow path: drop the PTE lock, take the PMD lock, relock and recheck emptiness.
    ///
    /// # Errors
    /// A bad range.
    #[track_caller]
    pub fn madvise_dontneed(&self, start: u64, len: u64, reclaim: bool) -> Result<ZapStats, Error> {
        let end = self.check_range(start, len)?;
        if let Some(vg) = self.lock_vma_under_rcu(start) {
            if end <= vg.vma().end {
                return Ok(
                    self.zap_range(start, end, reclaim, |va| vg.pmd_offset(va).ok().flatten())
                );
            }
        }
        let mm = self.mmap_read_lock_at(Location::caller())?;
        Ok(self.zap_range(start, end, reclaim, |va| mm.pmd_offset(va).ok().flatten()))
    }

    /// Zaps `[start, end)` walking through `walk` (any walk-lock token's `pmd_offset`).
    pub(crate) fn zap_range<'m: 't, 't>(
        &self,
        start: u64,
        end: u64,
        reclaim: bool,
        walk: impl Fn(u64) -> Option<PmdRef<'m, 't, Mmu, InTable>>,
    ) -> ZapStats {
        let mut stats = ZapStats::default();
        let mut va = start;
        while va < end {
            let region = va & !(PMD_SIZE - 1);
            let next = (region + PMD_SIZE).min(end);
            let whole = va == region && next == region + PMD_SIZE;
            if let Some(pmd) = walk(va) {
                self.zap_pmd(&pmd, va, next, whole, reclaim, &mut stats);
            }
            va = next;
        }
        stats
    }

    /// `zap_pmd_range` for one pmd: re-reads the entry until it is zapped, since a concurrent
    /// split or collapse may change it under us.
    fn zap_pmd(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        va: u64,
        next: u64,
        whole: bool,
        reclaim: bool,
        stats: &mut ZapStats,
    ) {
        loop {
            match pmd.pmd_val().kind() {
                PmdKind::Huge(_) | PmdKind::Migration if whole => {
                    match self.zap_huge_pmd(pmd, va) {
                        Ok(_) => {
                            stats.huge += 1;
                            return;
                        }
                        Err(Error::TableInTheWay { .. }) => continue,
                        Err(_) => return,
                    }
                }
                PmdKind::Huge(_) | PmdKind::Migration => {
                    // Only part of the range: split, then zap the PTEs.
                    if self.split_huge_pmd_at(pmd, va).is_err() {
                        return;
                    }
                }
                PmdKind::Table(_) => {
                    if self.zap_ptes(pmd, va, next, reclaim && whole, stats) {
                        return;
                    }
                }
                // In the middle of a split (invalidated): wait for its PMD lock holder.
                PmdKind::NotPresent => {
                    let pml = pmd_lock(pmd);
                    if matches!(pml.pmdp_get().kind(), PmdKind::NotPresent) {
                        // Not a split in progress: an entry this zap does not handle.
                        return;
                    }
                }
                PmdKind::None | PmdKind::Bad => return,
            }
        }
    }

    /// `zap_pte_range` over `[va, next)` inside one table, then PT_RECLAIM if asked.
    fn zap_ptes(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        va: u64,
        next: u64,
        reclaim: bool,
        stats: &mut ZapStats,
    ) -> bool {
        let ptl = match pte_offset_map_lock(pmd, va) {
            Ok(ptl) => ptl,
            // The table went away or became huge meanwhile: let the caller look again.
            Err(NoMap::Huge | NoMap::NotPresent | NoMap::Migration) => return false,
            Err(_) => return true,
        };
        let mut a = va;
        while a < next {
            // Each clear drops its page's reference after a grace period.
            if !ptl.ptep_get_and_clear(a).is_none() {
                stats.pages += 1;
            }
            a += PAGE_SIZE;
        }
        let empty = reclaim && ptl.entries().all(|p| p.is_none());
        if empty && self.try_reclaim(pmd, ptl) {
            stats.tables_reclaimed += 1;
        }
        true
    }

    /// PT_RECLAIM of an empty table whose PTE lock is held.
    fn try_reclaim(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        ptl: PteLocked<'_, Mmu, Attached>,
    ) -> bool {
        // Fast path (`try_get_and_clear_pmd`): trylock, since the PTE lock is already held.
        if let Some(pml) = pmd_trylock(pmd) {
            return self.reclaim_locked(pml, ptl);
        }
        drop(ptl);
        // Slow path (`try_to_free_pte`): PMD lock first, then the PTE lock, recheck emptiness.
        let pml = pmd_lock(pmd);
        match pte_offset_map_lock(pmd, 0) {
            Ok(ptl) if ptl.entries().all(|p| p.is_none()) => self.reclaim_locked(pml, ptl),
            _ => false,
        }
    }

    /// Detaches an empty table under both locks and frees it after a grace period
    /// (`free_pte` → `tlb_remove_table`, RCU mode).
    fn reclaim_locked(
        &self,
        pml: PmdLockGuard<'_, '_, Mmu>,
        ptl: PteLocked<'_, Mmu, Attached>,
    ) -> bool {
        let Ok(table) = pmdp_collapse_flush(&pml, ptl) else {
            return false;
        };
        drop(pml);
        table.pte_free_defer();
        self.counters.reclaims.fetch_add(1, Ordering::Relaxed);
        true
    }
}
