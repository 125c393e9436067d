//! Transparent huge pages: mapping a huge pmd with a deposited table, splitting it
//! (`__split_huge_pmd_locked`, `__split_huge_zero_page_pmd`) and zapping it
//! (`zap_deposited_table`).

use super::entry::{HUGE, PRESENT, PmdKind, Pte, huge_entry};
use super::frames::{ENTRIES, FrameKind};
use super::locks::MmapReadGuard;
use super::vma::VmaKind;
use super::{Mmu, PMD_SIZE};
use crate::error::Error;
use crate::ops::fill_pte_table;
use crate::provenance::{DetachedPmd, InTable, PmdLockGuard, PmdRef, pmd_lock};
use core::panic::Location;
use std::sync::atomic::Ordering;
use std::vec::Vec;

/// What [`Mmu::split_huge_pmd`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitOutcome {
    /// A present huge page was split into 512 PTEs.
    Split,
    /// The huge zero page was split into 512 zero-page PTEs.
    ZeroSplit,
    /// A huge migration entry was split into 512 migration PTEs (without invalidating it).
    MigrationSplit,
    /// No huge pmd there.
    NotHuge,
}

/// Writes a huge pmd into the locked slot (`set_pmd_at`).
fn set_pmd_huge(pml: &PmdLockGuard<'_, '_, Mmu>, pfn: u64) {
    pml.pmd().slot().0.store(huge_entry(pfn), Ordering::Release);
}

impl Mmu {
    /// The huge zero page (512 frames, allocated on first use and kept), and with it the 4 KiB
    /// zero page, so that splitting a huge zero pmd never needs to allocate (the kernel's zero
    /// page is static). On failure nothing stays allocated.
    fn huge_zero_pfn(&self) -> Result<u64, Error> {
        let _init = self
            .huge_zero_init
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let pfn @ 1.. = self.huge_zero.load(Ordering::Acquire) {
            return Ok(pfn);
        }
        let had_zero = self.zero_page().is_some();
        let zero = self.zero_pfn()?;
        match self.frames.alloc_huge() {
            Ok(pfn) => {
                self.huge_zero.store(pfn, Ordering::Release);
                Ok(pfn)
            }
            Err(e) => {
                if !had_zero {
                    self.drop_zero_page(zero);
                }
                Err(e)
            }
        }
    }

    /// Whether `pfn` is the huge zero page. Lock-free: GUP-fast asks inside its read section.
    pub(crate) fn is_huge_zero(&self, pfn: u64) -> bool {
        pfn != 0 && self.huge_zero.load(Ordering::Acquire) == pfn
    }

    /// Maps a 2 MiB page at `va` with a deposited PTE table (a THP fault). Returns the first
    /// of its 512 frames.
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::AlreadyMapped`] (a huge page is there),
    /// [`Error::TableInTheWay`] (a PTE table is there), [`Error::OutOfFrames`].
    #[track_caller]
    pub fn map_huge(&self, va: u64) -> Result<u64, Error> {
        self.map_huge_inner(va, false)
    }

    /// Maps the shared huge zero page read-only at `va` (a read fault on an anonymous THP
    /// range), with a deposited table. Returns the zero page's first frame.
    ///
    /// # Errors
    /// As [`Mmu::map_huge`].
    #[track_caller]
    pub fn map_huge_zero(&self, va: u64) -> Result<u64, Error> {
        self.map_huge_inner(va, true)
    }

    #[track_caller]
    fn map_huge_inner(&self, va: u64, zero: bool) -> Result<u64, Error> {
        self.check_va(va, PMD_SIZE)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        match mm.pmd_offset(va)?.map(|p| p.pmd_val().kind()) {
            None | Some(PmdKind::None) => {}
            Some(PmdKind::Huge(_)) => return Err(Error::AlreadyMapped { addr: va }),
            Some(_) => return Err(Error::TableInTheWay { addr: va }),
        }
        let mut reserve = self
            .frames
            .alloc_n(self.missing_upper(va) + 1, FrameKind::Pte)?;
        let data = if zero {
            self.huge_zero_pfn()
        } else {
            self.frames.alloc_huge()
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                self.release(reserve);
                return Err(e);
            }
        };
        if let Some(vma) = self.vma_at(va).filter(|v| v.kind == VmaKind::Anon) {
            self.anon_vma_prepare(&vma);
        }
        let result = self.install_huge(&mm, va, data, &mut reserve);
        self.release(reserve);
        if result.is_err() && !zero {
            self.frames.put(data);
        }
        result.map(|()| data)
    }

    fn install_huge(
        &self,
        mm: &MmapReadGuard<'_>,
        va: u64,
        data: u64,
        reserve: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let deposit = self.fresh_table(reserve)?;
        let pmd = mm.pmd_alloc_from(va, reserve)?;
        let pml = pmd_lock(&pmd);
        let err = match pml.pmdp_get().kind() {
            PmdKind::None => None,
            PmdKind::Huge(_) => Some(Error::AlreadyMapped { addr: va }),
            _ => Some(Error::TableInTheWay { addr: va }),
        };
        if let Some(e) = err {
            drop(pml);
            deposit.pte_free();
            return Err(e);
        }
        // The huge entry first: a deposit hangs on a huge pmd.
        set_pmd_huge(&pml, data);
        if let Err(r) = deposit.pgtable_trans_huge_deposit(&pml) {
            pml.pmd().slot().0.store(0, Ordering::Release);
            drop(pml);
            r.value.pte_free();
            return Err(r.error);
        }
        Ok(())
    }

    /// Splits the huge pmd covering `va` into a PTE table (`__split_huge_pmd`), under the mmap
    /// read lock and the PMD lock:
    ///
    /// - a present huge page: `pmdp_invalidate` (lockless readers now see a non-present entry,
    ///   never a misclassified one), *then* withdraw the deposited table, fill its 512 PTEs
    ///   through an owned (`Detached`) map, and publish it;
    /// - the huge zero page: clear, withdraw, fill with zero-page PTEs, publish;
    /// - a migration entry: no invalidation (that made it look present on arm64, bug B7);
    ///   withdraw, fill with migration PTEs, publish.
    ///
    /// Pins taken through the huge pmd stay valid: the folio stays whole, and each of the 512
    /// PTEs holds a reference to it.
    ///
    /// # Errors
    /// A bad address; [`Error::OutOfFrames`] if a table (no deposit) or the zero page cannot be
    /// allocated, in which case nothing changes.
    #[track_caller]
    pub fn split_huge_pmd(&self, va: u64) -> Result<SplitOutcome, Error> {
        self.check_va(va, 1)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Ok(SplitOutcome::NotHuge);
        };
        self.split_huge_pmd_at(&pmd, va)
    }

    /// `__split_huge_pmd` on a slot reached under any walk lock.
    pub(crate) fn split_huge_pmd_at(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        va: u64,
    ) -> Result<SplitOutcome, Error> {
        let haddr = va & !(PMD_SIZE - 1);
        let pml = pmd_lock(pmd);
        let old = pml.pmdp_get();
        if !matches!(old.kind(), PmdKind::Huge(_) | PmdKind::Migration) {
            return Ok(SplitOutcome::NotHuge);
        }
        // The zero page may need allocating: do it before touching the entry.
        let zero = match old.kind() {
            PmdKind::Huge(pfn) if self.is_huge_zero(pfn) => Some(self.zero_pfn()?),
            _ => None,
        };
        let (outcome, fill): (SplitOutcome, Vec<Pte>) = match old.kind() {
            PmdKind::Huge(_) if zero.is_some() => {
                let zero = zero.unwrap_or_default();
                // `pmdp_huge_clear_flush`: the entry becomes none.
                pmd.slot().0.store(0, Ordering::Release);
                (
                    SplitOutcome::ZeroSplit,
                    (0..ENTRIES).map(|_| Pte::special(zero)).collect(),
                )
            }
            PmdKind::Huge(pfn) => {
                // `pmdp_invalidate`: clear present, keep the huge bit; lockless readers see a
                // non-present entry and back off.
                pmd.slot()
                    .0
                    .store((old.raw() & !PRESENT) | HUGE, Ordering::Release);
                let anon = self.vma_at(haddr).is_some_and(|v| v.kind == VmaKind::Anon);
                let ptes = (0..ENTRIES as u64)
                    .map(|i| {
                        if anon {
                            Pte::anon_page(pfn + i)
                        } else {
                            Pte::page(pfn + i)
                        }
                    })
                    .collect();
                (SplitOutcome::Split, ptes)
            }
            PmdKind::Migration => {
                let offset = (old.raw() & super::entry::ADDR_MASK) >> 12;
                let ptes = (0..ENTRIES as u64)
                    .map(|i| Pte::migration(offset + i))
                    .collect();
                (SplitOutcome::MigrationSplit, ptes)
            }
            _ => return Ok(SplitOutcome::NotHuge),
        };
        // Only now, with the entry invalid, take the deposited table back.
        let mut table = match DetachedPmd::pgtable_trans_huge_withdraw(&pml) {
            Some(t) => t,
            None => match DetachedPmd::pte_alloc_one(self) {
                Ok(t) => t,
                Err(e) => {
                    // No deposit and no memory: put the entry back as it was; nothing changed.
                    pmd.slot().0.store(old.raw(), Ordering::Release);
                    return Err(e);
                }
            },
        };
        // Fill: each PTE takes a reference to the folio (the pmd held one, dropped below), so
        // pins taken through the huge pmd stay valid and the folio stays whole.
        // A refusal cannot happen (the pages are the folio's, the zero page exists); if it
        // did, the generic fill undoes what it wrote.
        let filled = fill_pte_table(&mut table, haddr, fill);
        if let Err(e) = filled {
            pmd.slot().0.store(old.raw(), Ordering::Release);
            if let Err(r) = table.pgtable_trans_huge_deposit(&pml) {
                r.value.pte_free();
            }
            return Err(e);
        }
        if let (SplitOutcome::Split, PmdKind::Huge(pfn)) = (outcome, old.kind()) {
            self.frames.put(pfn);
        }
        // Publish: the release store of `pmd_populate` orders the 512 writes before it.
        pmd.slot().0.store(0, Ordering::Relaxed);
        if let Err(r) = table.pmd_populate_split(&pml) {
            // Cannot happen under the PMD lock; never lose the table.
            r.value.pte_free();
        }
        self.counters.splits.fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Unmaps the 2 MiB page at `va` (`zap_huge_pmd`): clears the huge pmd under the PMD lock,
    /// frees the deposited table at once (`zap_deposited_table`: it was never visible) and drops
    /// the page after a grace period. Returns the first frame.
    ///
    /// A huge migration entry is zapped too (returning frame 0: it references no page).
    ///
    /// # Errors
    /// A bad or misaligned address, [`Error::NotMapped`], [`Error::TableInTheWay`] (a PTE
    /// table, possibly empty, is there).
    #[track_caller]
    pub fn unmap_huge(&self, va: u64) -> Result<u64, Error> {
        self.check_va(va, PMD_SIZE)?;
        let mm = self.mmap_read_lock_at(Location::caller())?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        self.zap_huge_pmd(&pmd, va)
    }

    pub(crate) fn zap_huge_pmd(
        &self,
        pmd: &PmdRef<'_, '_, Mmu, InTable>,
        va: u64,
    ) -> Result<u64, Error> {
        let pml = pmd_lock(pmd);
        let pfn = match pml.pmdp_get().kind() {
            PmdKind::Huge(pfn) => Some(pfn),
            // A huge migration entry: no page reference to drop, but its deposit goes too.
            PmdKind::Migration => None,
            PmdKind::None => return Err(Error::NotMapped { addr: va }),
            _ => return Err(Error::TableInTheWay { addr: va }),
        };
        pmd.slot().0.store(0, Ordering::Release);
        if let Some(table) = DetachedPmd::pgtable_trans_huge_withdraw(&pml) {
            table.pte_free();
        }
        drop(pml);
        match pfn {
            Some(pfn) if !self.is_huge_zero(pfn) => self.put_pages_deferred(std::vec![pfn]),
            _ => {}
        }
        Ok(pfn.unwrap_or(0))
    }
}
