//! The upper levels of the walk: address checks, the PGD → PUD → PMD descent to a pmd slot,
//! the allocation of missing upper-level tables, and the way back from a slot to its address.
//!
//! Upper-level tables (PUD, PMD) are installed under `page_table_lock` and never freed while
//! the MMU lives, so these helpers need no walk lock; the lock tokens of [`super::locks`] call
//! them and bound what their callers may do with the slot.

use super::entry::{PmdKind, classify_pmd, table_entry};
use super::frames::{ENTRIES, FrameKind, PmdSlot};
use super::{Mmu, PMD_SIZE};
use crate::error::Error;
use std::sync::atomic::Ordering;
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

    /// The first address of the 2 MiB range a pmd slot of this MMU maps, or `None` for a slot
    /// that is not an entry of one of its PMD tables.
    pub(crate) fn slot_va(&self, slot: &PmdSlot) -> Option<u64> {
        let (pfn, index) = self.frames.locate(slot)?;
        if self.frames.kind(pfn) != FrameKind::Pmd {
            return None;
        }
        let base = self.frames.desc(pfn).pmd_base.load(Ordering::Acquire);
        Some(base + index as u64 * PMD_SIZE)
    }
}
