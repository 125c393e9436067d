//! Tearing down and moving page tables: `munmap` with `free_pgtables` under the exclusive
//! token, and mremap's `move_normal_pmd`.

use super::entry::PmdKind;
use super::locks::Exclusive;
use super::{Mmu, PMD_SIZE};
use crate::error::Error;
use crate::provenance::{
    PgtableBackend, pmd_clear_exclusive, pmd_lock, pmdp_collapse_flush, pte_offset_map_lock,
};
use core::panic::Location;
use std::sync::atomic::Ordering;

impl Exclusive<'_, '_> {
    /// Zaps every mapping in the range (`unmap_vmas`).
    pub fn zap(&self) -> super::zap::ZapStats {
        let (start, end) = self.range();
        self.mmu()
            .zap_range(start, end, false, |va| self.pmd_offset(va).ok().flatten())
    }

    /// Frees the PTE tables of the 2 MiB regions wholly inside the range (`free_pgtables` →
    /// `free_pte_range`): each slot is cleared **without** the PTE lock, which only the
    /// exclusivity this token proves makes safe, and the table goes to `tlb_remove_table`
    /// (here `pte_free_defer`), since lockless walkers may still be inside it. Upper-level
    /// tables are kept. Returns the number of tables freed.
    ///
    /// A page still mapped in a freed table (the range was not zapped first) loses its
    /// mapping's reference after the grace period; an anonymous one is counted in
    /// `anon_pages_lost`.
    pub fn free_pgtables(mut self) -> usize {
        let mmu = self.mmu();
        let (start, end) = self.range();
        let mut freed = 0;
        let mut va = start.next_multiple_of(PMD_SIZE);
        while va + PMD_SIZE <= end {
            if let Ok(table) = pmd_clear_exclusive(&mut self, va) {
                mmu.free_retired(table, va);
                freed += 1;
            }
            va += PMD_SIZE;
        }
        mmu.counters
            .pgtables_freed
            .fetch_add(freed as u64, Ordering::Relaxed);
        freed
    }
}

impl Mmu {
    /// Unmaps `[start, start + len)`: takes the mmap lock for writing, detaches the VMAs in the
    /// range (the exclusive token), zaps it, and frees its page tables (`free_pgtables`).
    /// Returns the number of PTE tables freed.
    ///
    /// # Errors
    /// A bad range, or [`Error::PartialVma`].
    #[track_caller]
    pub fn munmap(&self, start: u64, len: u64) -> Result<usize, Error> {
        let mut mm = self.mmap_write_lock_at(Location::caller())?;
        let excl = mm.detach_range(start, len)?;
        excl.zap();
        Ok(excl.free_pgtables())
    }

    /// Moves the PTE table at `old` to the empty pmd slot at `new` (`move_normal_pmd`, the
    /// table-at-a-time path of mremap): mmap write lock, the rmap lock for writing
    /// (`take_rmap_locks`), both PMD locks, then **recheck that the old entry is still a
    /// present table** (bug B6: it was read before the locks and may have been retracted),
    /// detach it under its PTE lock and populate the new slot with the same table. The table
    /// stays live: walkers of the old slot fail their recheck, walkers of the new one find it.
    ///
    /// Only page tables move; VMAs are left where they are (this model has no mremap of VMAs).
    /// In the kernel the destination is the moved VMA itself (`copy_vma` gives it the source's
    /// `anon_vma` before `move_page_tables`), so here both 2 MiB ranges must lie inside VMAs of
    /// the same kind, and the destination VMA gets the source's `anon_vma` before the table
    /// appears under it. Without that, a table holding anonymous (COW) pages would land under
    /// a file VMA with no `anon_vma`, and `retract_page_tables`, whose only guard against
    /// anonymous pages is that flag (B4), would free them.
    ///
    /// # Errors
    /// Misaligned addresses, [`Error::NotInVma`] if a VMA of one kind does not cover both
    /// ranges, [`Error::NotMapped`] if there is no table at `old` (any more),
    /// [`Error::AlreadyMapped`] if `new` is not empty, [`Error::OutOfFrames`] for the new
    /// upper levels.
    #[track_caller]
    pub fn move_normal_pmd(&self, old: u64, new: u64) -> Result<(), Error> {
        self.check_va(old, PMD_SIZE)?;
        self.check_va(new, PMD_SIZE)?;
        let mm = self.mmap_write_lock_at(Location::caller())?;
        // The VMAs cannot change under the mmap write lock.
        let covering = |va: u64| {
            self.vma_at(va)
                .filter(|v| v.start <= va && va + PMD_SIZE <= v.end)
        };
        let old_vma = covering(old).ok_or(Error::NotInVma { addr: old })?;
        let new_vma = covering(new)
            .filter(|v| v.kind == old_vma.kind)
            .ok_or(Error::NotInVma { addr: new })?;
        let Some(old_pmd) = mm.pmd_offset(old)? else {
            return Err(Error::NotMapped { addr: old });
        };
        if !matches!(old_pmd.pmd_val().kind(), PmdKind::Table(_)) {
            return Err(Error::NotMapped { addr: old });
        }
        let new_pmd = mm.pmd_alloc(new)?;
        // All the locks: VMA write locks of both ends (VMA-lock walkers and PT_RECLAIM are out),
        // then the rmap write lock (rmap walkers and retract are out).
        let _old_write = mm.vma_start_write_at(old, Location::caller())?;
        let _new_write = if new_vma.contains(old) {
            None
        } else {
            mm.vma_start_write_at(new, Location::caller())?
        };
        let _rmap = self.i_mmap_lock_write_at(Location::caller())?;
        let old_pml = pmd_lock(&old_pmd);
        // SAFETY: both slots are this MMU's (walks of its own mmap lock).
        let new_pml = if unsafe { self.same_pmd_lock(old_pmd.slot(), new_pmd.slot()) } {
            None
        } else {
            Some(pmd_lock(&new_pmd))
        };
        // The B6 recheck, now that every remover is excluded.
        if !matches!(old_pml.pmdp_get().kind(), PmdKind::Table(_)) {
            return Err(Error::NotMapped { addr: old });
        }
        if new_pmd.pmd_val().kind() != PmdKind::None {
            return Err(Error::AlreadyMapped { addr: new });
        }
        let ptl = pte_offset_map_lock(&old_pmd, old).map_err(|_| Error::NotMapped { addr: old })?;
        let table = pmdp_collapse_flush(&old_pml, ptl).map_err(|r| r.error)?;
        // The table may hold anonymous pages: its new VMA must say so before the table is
        // reachable there (retract, excluded now by the rmap write lock, reads the flag under
        // the PTE lock once it gets in).
        if old_vma.anon_vma.load(Ordering::Acquire) {
            self.anon_vma_prepare(&new_vma);
        }
        if let Err(r) = table.pmd_populate_at(&mm, new_pml.as_ref().unwrap_or(&old_pml), &new_pmd) {
            // Cannot happen (checked under the locks); never lose the table: put it back.
            let e = r.error;
            if let Err(r) = r.value.pmd_populate(&mm, &old_pml) {
                r.value.pte_free_defer();
            }
            return Err(e);
        }
        self.counters.pmd_moves.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
