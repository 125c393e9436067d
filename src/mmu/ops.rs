//! Lockless copies, translation, fault injection, statistics and the state dump.

use super::entry::PmdKind;
use super::frames::ENTRIES;
use super::{Mmu, PAGE_SIZE, PMD_SIZE};
use crate::error::Error;
use crate::provenance::{
    CopiedUnderRcu, LocklessWalk, PmdRef, Unprotected, pmd_lock, pte_offset_map,
};
use crate::rcu::{EpochRcu, RcuGuard};
use core::panic::Location;
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
    /// Tables retracted (`retract_pte_table`, `retract_page_tables`).
    pub retracts: u64,
    /// Anonymous pages a remover dropped with their table (retraction, collapse or
    /// `free_pgtables`): data lost. Always 0 unless a remover is buggy.
    pub anon_pages_lost: u64,
    /// Huge pmds split into PTE tables.
    pub splits: u64,
    /// Collapses (`collapse_pte_mapped_thp`, `collapse_huge_page`) that installed a huge pmd.
    pub collapses: u64,
    /// Empty PTE tables freed by zap's PT_RECLAIM.
    pub reclaims: u64,
    /// PTE tables freed by `free_pgtables`.
    pub pgtables_freed: u64,
    /// PTE tables moved by `move_normal_pmd`.
    pub pmd_moves: u64,
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
    /// The VMAs, in address order.
    pub vmas: Vec<super::VmaInfo>,
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
            anon_pages_lost: c.anon_pages_lost.load(Ordering::Relaxed),
            splits: c.splits.load(Ordering::Relaxed),
            collapses: c.collapses.load(Ordering::Relaxed),
            reclaims: c.reclaims.load(Ordering::Relaxed),
            pgtables_freed: c.pgtables_freed.load(Ordering::Relaxed),
            pmd_moves: c.pmd_moves.load(Ordering::Relaxed),
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
    ) -> Result<Option<PmdRef<'g, 'g, Mmu, CopiedUnderRcu<'g>>>, Error> {
        if !core::ptr::eq(guard.domain(), &self.rcu) {
            return Err(Error::WrongMmu);
        }
        self.check_va(va, 1)?;
        LocklessWalk::pmd_copy_lockless(self, guard, va)
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
    ) -> Result<Option<PmdRef<'_, '_, Mmu, Unprotected>>, Error> {
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
        self.check_va(va, 1)?;
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

    /// Fault injection: writes `raw` into the pmd slot for `va` under the mmap write lock and
    /// the PMD lock, and returns the old value. Use it to place migration, non-present or
    /// malformed entries that the map functions must classify as "nomap". A PTE table that the
    /// old value named is leaked (its frame stays allocated), never freed under a walker.
    ///
    /// # Safety
    /// The write bypasses every rule of the protocol: it takes no PTE lock (rule I8), and the
    /// new value is not checked. The caller makes sure that the result is a state the MMU
    /// could reach by itself: `raw` names no PTE table that another slot names, or that is
    /// free or not a table; no thread holds an `Attached` lock of a table the old value named
    /// (it is unlinked without that lock); a huge entry names a huge page whose reference it
    /// holds; and any page reference the old value held is accounted for
    /// ([`Mmu::put_page`]). Breaking this can make a later operation free a live table.
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
    /// let head = mmu.map_huge(0x20_0000)?;
    /// // SAFETY: a migration entry names no table; the huge page's reference goes with the
    /// // mapping, as when the kernel starts migrating it.
    /// unsafe {
    ///     mmu.inject_pmd(0x20_0000, migration_entry(7))?;
    ///     mmu.put_page(head);
    /// }
    /// let mm = mmu.mmap_read_lock();
    /// let pmd = mm.pmd_offset(0x20_0000)?.unwrap();
    /// assert_eq!(pte_offset_map(&pmd, 0x20_0000).err(), Some(NoMap::Migration));
    /// # Ok::<(), typed_pgtable::Error>(())
    /// ```
    #[track_caller]
    pub unsafe fn inject_pmd(&self, va: u64, raw: u64) -> Result<u64, Error> {
        self.check_va(va, 1)?;
        let mm = self.mmap_write_lock_at(Location::caller())?;
        let Some(pmd) = mm.pmd_offset(va)? else {
            return Err(Error::NotMapped { addr: va });
        };
        let _pml = pmd_lock(&pmd);
        let old = pmd.slot().0.swap(raw, Ordering::AcqRel);
        // Keep the audit's view of which tables are installed.
        let frames = self.frames.nframes() as u64;
        if let super::entry::PmdKind::Table(t) = super::entry::classify_pmd(old, frames) {
            self.table_unlinked(t);
        }
        if let super::entry::PmdKind::Table(t) = super::entry::classify_pmd(raw, frames) {
            self.frames.desc(t).installed.store(true, Ordering::Relaxed);
        }
        Ok(old)
    }

    /// A full dump of the page tables, deposits and the free-frame count (under the mmap
    /// write lock). Two equal dumps mean the MMU is in the same state.
    pub fn dump(&self) -> MmuDump {
        let _mm = self.mmap_write_lock();
        let mut entries = Vec::new();
        let mut deposits = Vec::new();
        self.dump_table(self.root, 4, 0, &mut entries, &mut deposits);
        let vmas = self
            .vmas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|v| v.info())
            .collect();
        MmuDump {
            entries,
            deposits,
            free_frames: self.free_frames(),
            vmas,
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
            let dep = self.frames.deposits(pfn);
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

// SAFETY: the slots come from `Mmu::pmd_slot`: slots of this MMU's PMD tables, which are never
// freed while the MMU lives (and so outlive every read section of its domain).
unsafe impl LocklessWalk for Mmu {
    fn pmd_slot_lockless<'g>(
        &'g self,
        _guard: &'g RcuGuard<'_, EpochRcu>,
        addr: u64,
    ) -> Option<&'g super::PmdSlot> {
        self.check_va(addr, 1).ok()?;
        self.pmd_slot(addr)
    }
}
