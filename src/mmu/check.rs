//! Checks over page tables: the kernel's `page_table_check` clear-range pass on a detached
//! table (case 1), and a whole-MMU consistency check for tests and the torture run.

use super::Mmu;
use super::entry::{PmdKind, Pte};
use super::frames::{ENTRIES, FrameKind};
use crate::provenance::{Detached, PmdRef, pte_offset_map};
use std::collections::HashSet;
use std::format;
use std::string::String;
use std::sync::atomic::Ordering;
use std::vec::Vec;

/// What [`page_table_check_pte_clear_range`] found in a detached table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PtcReport {
    /// Present PTEs.
    pub present: usize,
    /// Present anonymous PTEs.
    pub anon: usize,
    /// Malformed PTEs.
    pub bad: usize,
}

/// `__page_table_check_pte_clear_range`: walks every PTE of a table its caller detached and
/// owns (case 1: a pmd *value*, mapped through the `Detached` proof) and accounts for the
/// entries that are about to go away with it.
pub fn page_table_check_pte_clear_range(
    _mmu: &Mmu,
    addr: u64,
    pmd: &PmdRef<'_, '_, Mmu, Detached>,
) -> PtcReport {
    let mut r = PtcReport::default();
    // The audit's record that this removal was checked (rule I11).
    if let PmdKind::Table(t) = pmd.pmd_val().kind() {
        // The MMU the table belongs to (not necessarily `_mmu`).
        pmd.backend()
            .frames
            .desc(t)
            .checked
            .store(true, Ordering::Relaxed);
    }
    let Ok(map) = pte_offset_map(pmd, addr) else {
        return r;
    };
    for pte in map.entries() {
        if pte.is_bad() {
            r.bad += 1;
        } else if pte.is_present() {
            r.present += 1;
            if pte.is_anon() {
                r.anon += 1;
            }
        }
    }
    r
}

impl Mmu {
    /// Checks the whole MMU (under the mmap write lock): every pmd that names a table names a
    /// live PTE-table frame, no table is named twice, every deposit is a live PTE table, every
    /// present PTE maps a data frame with references, huge pmds map data, and nothing is
    /// malformed. Returns the problems found.
    pub fn check_tables(&self) -> Vec<String> {
        let _mm = self.mmap_write_lock();
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for l4 in 0..ENTRIES {
            let Some(pud) = self.table_at(self.root, l4) else {
                continue;
            };
            for l3 in 0..ENTRIES {
                let Some(pmdt) = self.table_at(pud, l3) else {
                    continue;
                };
                let base = ((l4 as u64) << 39) | ((l3 as u64) << 30);
                self.check_deposits(pmdt, &mut seen, &mut problems);
                for l2 in 0..ENTRIES {
                    let raw = self.frames.cell(pmdt, l2).0.load(Ordering::Acquire);
                    self.check_pmd(base | ((l2 as u64) << 21), raw, &mut seen, &mut problems);
                }
            }
        }
        problems
    }

    fn check_deposits(&self, pmdt: u64, seen: &mut HashSet<u64>, problems: &mut Vec<String>) {
        let dep = self.frames.deposits(pmdt).clone();
        for (i, t) in dep {
            if self.frames.kind(t) != FrameKind::Pte {
                problems.push(format!(
                    "deposit at pmd table {pmdt:#x}[{i}] is a {:?} frame",
                    self.frames.kind(t)
                ));
            }
            if !seen.insert(t) {
                problems.push(format!("table {t:#x} is referenced twice"));
            }
        }
    }

    fn check_pmd(&self, va: u64, raw: u64, seen: &mut HashSet<u64>, problems: &mut Vec<String>) {
        match super::entry::classify_pmd(raw, self.frames.nframes() as u64) {
            PmdKind::Table(t) if self.frames.kind(t) != FrameKind::Pte => problems.push(format!(
                "pmd for {va:#x} names a {:?} frame {t:#x}",
                self.frames.kind(t)
            )),
            PmdKind::Table(t) => {
                if !seen.insert(t) {
                    problems.push(format!("table {t:#x} is referenced twice"));
                }
                self.check_ptes(va, t, problems);
            }
            PmdKind::Huge(pfn) if self.frames.kind(pfn) != FrameKind::Data => {
                problems.push(format!(
                    "huge pmd for {va:#x} maps a {:?} frame",
                    self.frames.kind(pfn)
                ))
            }
            PmdKind::Bad => problems.push(format!("pmd for {va:#x} is malformed: {raw:#x}")),
            _ => {}
        }
    }

    fn check_ptes(&self, va: u64, table: u64, problems: &mut Vec<String>) {
        let frames = self.frames.nframes() as u64;
        for i in 0..ENTRIES {
            let pte = Pte::from_raw(self.frames.cell(table, i).0.load(Ordering::Acquire));
            let at = va | ((i as u64) << 12);
            if pte.is_bad() {
                problems.push(format!("pte for {at:#x} is malformed"));
                continue;
            }
            let Some(pfn) = pte.pfn().filter(|_| !pte.is_special()) else {
                continue;
            };
            if pfn >= frames
                || self.frames.kind(pfn) != FrameKind::Data
                || self.frames.refs(pfn) == 0
            {
                problems.push(format!(
                    "pte for {at:#x} maps frame {pfn:#x} that is not a live data page"
                ));
            }
        }
    }

    fn table_at(&self, table: u64, index: usize) -> Option<u64> {
        let raw = self.frames.cell(table, index).0.load(Ordering::Acquire);
        match super::entry::classify_pmd(raw, self.frames.nframes() as u64) {
            PmdKind::Table(t) => Some(t),
            _ => None,
        }
    }
}
