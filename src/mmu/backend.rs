//! The in-memory MMU as a [`PgtableBackend`].

use super::Mmu;
use super::audit::{AuditRule, Violation};
use super::entry::{PmdKind, PmdVal, Pte, TableRef, classify_pmd, table_entry};
use super::frames::{ENTRIES, FrameKind, PmdSlot};
use super::lockdep::{self, How, LockClass};
use crate::error::{Error, NoMap};
use crate::provenance::{
    CopiedUnderRcu, Detached, InTable, MapKind, PgtableBackend, PmdRef, Unprotected,
};
use crate::rcu::{EpochRcu, RcuDomain};
use core::panic::Location;
use std::boxed::Box;
use std::sync::atomic::Ordering;

impl Mmu {
    pub(crate) fn snapshot(&self, raw: u64) -> PmdVal {
        let frames = self.frames.nframes() as u32;
        let generation = match classify_pmd(raw, u64::from(frames)) {
            PmdKind::Table(pfn) => self.frames.desc(pfn).generation.load(Ordering::Acquire),
            _ => 0,
        };
        PmdVal {
            raw,
            generation,
            frames,
        }
    }

    /// The frame of one of this MMU's slots.
    ///
    /// # Safety
    /// `slot` is one of this MMU's (the contract of the backend methods that call this).
    unsafe fn slot_frame(&self, slot: &PmdSlot) -> u64 {
        match self.frames.locate(slot) {
            Some((pfn, _)) => pfn,
            // Excluded by the caller's contract: slots reach these methods only through
            // `PmdRef`s of this MMU, whose invariant says so.
            None => unreachable!("a pmd slot outside this MMU's memory"),
        }
    }

    /// The page whose reference a PTE holds (`None` for non-present and special entries), or
    /// why no PTE may hold this value: a present entry must map a data page in use, a special
    /// one the zero page.
    fn pte_page(&self, pte: Pte) -> Result<Option<u64>, Error> {
        let Some(pfn) = pte.pfn() else {
            return Ok(None);
        };
        if pte.is_special() {
            return match self.zero_page() {
                Some(zero) if zero == pfn => Ok(None),
                _ => Err(Error::NotADataPage { pfn }),
            };
        }
        Ok(Some(pfn))
    }

    /// Drops the reference an entry that was just overwritten or cleared held, after a grace
    /// period (lockless walkers may still use the translation they read).
    fn drop_pte_page(&self, old: Pte) {
        if let Some(pfn) = old.pfn().filter(|_| !old.is_special()) {
            self.put_pages_deferred(std::vec![pfn]);
        }
    }

    /// The audit's side of an unlink: the table is detached now, and walkers that read the
    /// slot before may hold it until the next grace period.
    pub(crate) fn table_unlinked(&self, pfn: u64) {
        let d = self.frames.desc(pfn);
        d.installed.store(false, Ordering::Relaxed);
        d.checked.store(false, Ordering::Relaxed);
        d.unlinked_at
            .store(self.rcu.stats().grace_periods + 1, Ordering::Relaxed);
    }

    /// Rule I8: a slot that names a table is cleared under its PMD lock and the table's PTE
    /// lock, or under an exclusive token (the lock checker knows what this thread holds).
    fn audit_clear(&self, slot: &PmdSlot) {
        if !cfg!(feature = "lock-checker") {
            return;
        }
        let PmdKind::Table(table) = self.snapshot(slot.0.load(Ordering::Acquire)).kind() else {
            return;
        };
        let id = self.rcu.id();
        let Some((pmd_table, _)) = self.frames.locate(slot) else {
            return;
        };
        let locked = lockdep::holds(id, LockClass::Pmd, pmd_table)
            && lockdep::holds(id, LockClass::Pte, table);
        if !locked && !lockdep::holds(id, LockClass::Mmap, lockdep::EXCLUSIVE) {
            self.audit_rule(
                AuditRule::ClearWithoutLocks,
                table,
                "pmdp_collapse_flush",
                "clear",
            );
        }
    }

    /// Rule I9: an immediate free of a table that was unlinked needs a grace period since.
    fn audit_free_now(&self, table: &TableRef) {
        let at = self
            .frames
            .desc(table.pfn)
            .unlinked_at
            .load(Ordering::Relaxed);
        if at != 0 && self.rcu.stats().grace_periods < at {
            self.audit_rule(AuditRule::FreeWithoutGrace, table.pfn, "pte_free", "free");
        }
    }

    /// Rule I7: a table is installed under the PMD lock of its slot.
    fn audit_populate(&self, slot: &PmdSlot, table: &TableRef) {
        if !cfg!(feature = "lock-checker") {
            return;
        }
        let Some((pmd_table, _)) = self.frames.locate(slot) else {
            return;
        };
        if !lockdep::holds(self.rcu.id(), LockClass::Pmd, pmd_table) {
            self.audit_rule(
                AuditRule::PopulateWithoutLock,
                table.pfn,
                "pmd_populate",
                "install",
            );
        }
    }

    /// Rule I11: a table that was unlinked and still maps pages is checked
    /// (`page_table_check_pte_clear_range`) before it is freed.
    fn audit_removal(&self, table: &TableRef, op: &'static str) {
        let d = self.frames.desc(table.pfn);
        if d.unlinked_at.load(Ordering::Relaxed) == 0 || d.checked.load(Ordering::Relaxed) {
            return;
        }
        let maps_pages = (0..ENTRIES).any(|i| {
            Pte::from_raw(self.frames.cell(table.pfn, i).0.load(Ordering::Acquire)).is_present()
        });
        if maps_pages {
            self.audit_rule(AuditRule::UncheckedRemoval, table.pfn, op, "free");
        }
    }

    /// Rules I2 and I7: a write through a lock that proved attachment goes into an installed
    /// table; a write through an owner's map into one that is not.
    fn audit_write(&self, t: &TableRef, kind: MapKind) {
        let installed = self.frames.desc(t.pfn).installed.load(Ordering::Relaxed);
        match kind {
            MapKind::MapLock | MapKind::RwNolock if !installed => {
                self.audit_rule(AuditRule::WriteDetached, t.pfn, kind.name(), "write");
            }
            MapKind::Owned if installed => {
                self.audit_rule(AuditRule::WriteAfterPublish, t.pfn, kind.name(), "write");
            }
            _ => {}
        }
    }

    pub(crate) fn audit_rule(
        &self,
        rule: AuditRule,
        pfn: u64,
        op: &'static str,
        access: &'static str,
    ) {
        let generation = self.frames.desc(pfn).generation.load(Ordering::Acquire);
        self.frames.audit.record(Violation {
            rule,
            pfn,
            expected_gen: generation,
            found_gen: generation,
            op,
            access,
        });
    }

    fn check(&self, t: &TableRef, kind: MapKind, access: &'static str) {
        let found = self.frames.desc(t.pfn).generation.load(Ordering::Acquire);
        self.frames
            .audit
            .check(t.pfn, t.generation, found, kind.name(), access);
    }
}

// SAFETY: (1) PTE tables reachable from slots are freed only by `pte_free_defer` (an RCU
// callback of `self.rcu`) or by `pte_free` for tables no walker can reach: page-reference puts
// never free a frame that is not a data page (`Frames::put`), no safe call writes a slot
// except through the provenance layer (the raw `inject_pmd` is `unsafe`), and no PTE can name
// a table (`set_pte` maps only data pages in use); frame memory and descriptors (with the
// locks) are never deallocated while the MMU lives. (2) Every path that clears or replaces a
// slot naming a PTE table holds the PMD lock and the table's PTE lock (`pmdp_collapse_flush`
// is only called from the provenance layer with both) or the `Exclusive` token, whose holder
// has no other reference into the slot (`pmd_clear_exclusive` takes it by `&mut`); the MMU's
// own stores into slots (splits, huge zaps, collapses) replace huge or empty entries only. (3)
// `pmd_populate` is a release store after the table's contents were written. (4)
// `classify_pmd` accepts only present, well-formed, non-huge values naming a frame in range.
unsafe impl PgtableBackend for Mmu {
    type Rcu = EpochRcu;
    type Error = Error;
    type PmdSlot = PmdSlot;
    type PmdSnapshot = PmdVal;
    type Table = TableRef;
    type Pte = Pte;

    fn rcu(&self) -> &EpochRcu {
        &self.rcu
    }

    fn pmdp_get_lockless(&self, slot: &PmdSlot) -> PmdVal {
        self.snapshot(slot.0.load(Ordering::Acquire))
    }

    fn pmd_same(&self, a: &PmdVal, b: &PmdVal) -> bool {
        a.raw == b.raw
    }

    fn pmd_table(&self, pmd: &PmdVal) -> Result<TableRef, NoMap> {
        match pmd.kind() {
            PmdKind::Table(pfn) => Ok(TableRef {
                pfn,
                generation: pmd.generation,
            }),
            PmdKind::None => Err(NoMap::None),
            PmdKind::Migration => Err(NoMap::Migration),
            PmdKind::NotPresent => Err(NoMap::NotPresent),
            PmdKind::Huge(_) => Err(NoMap::Huge),
            PmdKind::Bad => Err(NoMap::Bad),
        }
    }

    fn pmd_of_table(&self, table: &TableRef) -> PmdVal {
        PmdVal {
            raw: table_entry(table.pfn),
            generation: table.generation,
            frames: self.frames.nframes() as u32,
        }
    }

    fn pte_index(&self, addr: u64) -> usize {
        ((addr >> 12) as usize) % ENTRIES
    }

    fn ptrs_per_pte(&self) -> usize {
        ENTRIES
    }

    unsafe fn pte_map(&self, table: &TableRef, kind: MapKind) {
        self.check(table, kind, "map");
        if self.frames.kind(table.pfn) != FrameKind::Pte {
            // A value that names a frame that is not a PTE table (a bogus pmd, a misclassified
            // entry): report it as a violation with the frame's current generation.
            let found = self
                .frames
                .desc(table.pfn)
                .generation
                .load(Ordering::Acquire);
            self.frames.audit.check(
                table.pfn,
                found.wrapping_add(1),
                found,
                kind.name(),
                "map of a non-table frame",
            );
        }
    }

    unsafe fn ptep_get(&self, table: &TableRef, index: usize, kind: MapKind) -> Pte {
        let v = self.frames.cell(table.pfn, index).0.load(Ordering::Acquire);
        self.check(table, kind, "read");
        Pte::from_raw(v)
    }

    unsafe fn set_pte(
        &self,
        table: &TableRef,
        index: usize,
        pte: Pte,
        kind: MapKind,
    ) -> Result<(), Error> {
        // A present entry holds a reference to its page: take it before the entry is visible.
        let new_page = self.pte_page(pte)?;
        if let Some(pfn) = new_page {
            if !self.frames.try_get(pfn) {
                return Err(Error::NotADataPage { pfn });
            }
        }
        let old = Pte::from_raw(
            self.frames
                .cell(table.pfn, index)
                .0
                .swap(pte.raw(), Ordering::AcqRel),
        );
        self.check(table, kind, "write");
        self.audit_write(table, kind);
        self.drop_pte_page(old);
        Ok(())
    }

    unsafe fn ptep_get_and_clear(&self, table: &TableRef, index: usize, kind: MapKind) -> Pte {
        let v = self
            .frames
            .cell(table.pfn, index)
            .0
            .swap(0, Ordering::AcqRel);
        self.check(table, kind, "write");
        self.audit_write(table, kind);
        let old = Pte::from_raw(v);
        self.drop_pte_page(old);
        old
    }

    #[track_caller]
    unsafe fn pte_lock(&self, table: &TableRef) {
        let at = Location::caller();
        lockdep::or_report(self.lock_check(LockClass::Pte, table.pfn, How::Blocking, at));
        self.frames.desc(table.pfn).lock.lock();
        lockdep::acquired(self.rcu.id(), LockClass::Pte, table.pfn, at);
        // The lock lives with the table: taking it after the table was freed is a use-after-free
        // of the lock (bug B9), even though this model never releases the lock's memory.
        self.check(table, MapKind::RoNolock, "lock");
    }

    unsafe fn pte_unlock(&self, table: &TableRef) {
        lockdep::released(self.rcu.id(), LockClass::Pte, table.pfn);
        self.frames.desc(table.pfn).lock.unlock();
    }

    #[track_caller]
    unsafe fn pmd_lock(&self, slot: &PmdSlot) {
        let at = Location::caller();
        // SAFETY: the caller passes one of our slots (trait contract).
        let pfn = unsafe { self.slot_frame(slot) };
        lockdep::or_report(self.lock_check(LockClass::Pmd, pfn, How::Blocking, at));
        self.frames.desc(pfn).lock.lock();
        lockdep::acquired(self.rcu.id(), LockClass::Pmd, pfn, at);
    }

    #[track_caller]
    unsafe fn pmd_trylock(&self, slot: &PmdSlot) -> bool {
        // SAFETY: as in `pmd_lock`.
        let pfn = unsafe { self.slot_frame(slot) };
        // A trylock never waits: allowed in any order (PT_RECLAIM under a PTE lock).
        let taken = self.frames.desc(pfn).lock.try_lock();
        if taken {
            lockdep::acquired(self.rcu.id(), LockClass::Pmd, pfn, Location::caller());
        }
        taken
    }

    unsafe fn same_pmd_lock(&self, a: &PmdSlot, b: &PmdSlot) -> bool {
        // SAFETY: both are our slots (trait contract).
        unsafe { self.slot_frame(a) == self.slot_frame(b) }
    }

    unsafe fn pmd_unlock(&self, slot: &PmdSlot) {
        // SAFETY: the caller holds the lock of one of our slots.
        let pfn = unsafe { self.slot_frame(slot) };
        lockdep::released(self.rcu.id(), LockClass::Pmd, pfn);
        self.frames.desc(pfn).lock.unlock();
    }

    unsafe fn pmd_populate(&self, slot: &PmdSlot, table: &TableRef) {
        self.audit_populate(slot, table);
        self.frames
            .desc(table.pfn)
            .installed
            .store(true, Ordering::Relaxed);
        // The release store orders every write to the table (and its lock's init) before the
        // entry that publishes it (`smp_wmb(); pmd_populate()`).
        slot.0.store(table_entry(table.pfn), Ordering::Release);
        self.counters
            .tables_installed
            .fetch_add(1, Ordering::Relaxed);
    }

    unsafe fn pmdp_collapse_flush(&self, slot: &PmdSlot) -> PmdVal {
        self.audit_clear(slot);
        let old = slot.0.swap(0, Ordering::AcqRel);
        // No TLB to flush in this model; a hardware walker would be shot down here. The table
        // cannot have been freed (both locks are held), so its current generation is the one
        // its readers recorded.
        let snap = self.snapshot(old);
        if let PmdKind::Table(t) = snap.kind() {
            self.table_unlinked(t);
        }
        snap
    }

    unsafe fn pgtable_trans_huge_deposit(&self, slot: &PmdSlot, table: &TableRef) -> bool {
        let Some((pfn, index)) = self.frames.locate(slot) else {
            return false;
        };
        let mut dep = self.frames.deposits(pfn);
        if dep.iter().any(|&(i, _)| usize::from(i) == index) {
            return false;
        }
        dep.push((index as u16, table.pfn));
        true
    }

    unsafe fn pgtable_trans_huge_withdraw(&self, slot: &PmdSlot) -> Option<TableRef> {
        let (pfn, index) = self.frames.locate(slot)?;
        let mut dep = self.frames.deposits(pfn);
        let at = dep.iter().position(|&(i, _)| i as usize == index)?;
        let (_, table) = dep.remove(at);
        let generation = self.frames.desc(table).generation.load(Ordering::Acquire);
        Some(TableRef {
            pfn: table,
            generation,
        })
    }

    fn pte_alloc_one(&self) -> Result<TableRef, Error> {
        let pfn = self.frames.alloc_n(1, FrameKind::Pte)?[0];
        let generation = self.frames.desc(pfn).generation.load(Ordering::Acquire);
        Ok(TableRef { pfn, generation })
    }

    unsafe fn pte_free(&self, table: &TableRef) {
        self.audit_free_now(table);
        self.audit_removal(table, "pte_free");
        self.counters
            .tables_freed_now
            .fetch_add(1, Ordering::Relaxed);
        self.frames.free_table(table.pfn);
    }

    unsafe fn pte_free_defer(&self, table: &TableRef) {
        self.audit_removal(table, "pte_free_defer");
        self.counters
            .tables_freed_deferred
            .fetch_add(1, Ordering::Relaxed);
        let frames = self.frames.clone();
        let pfn = table.pfn;
        self.rcu.call_rcu(Box::new(move || frames.free_table(pfn)));
    }
}

static_assertions::assert_eq_size!(PmdRef<'static, 'static, Mmu, InTable>, [usize; 2]);
static_assertions::assert_eq_size!(
    PmdRef<'static, 'static, Mmu, CopiedUnderRcu<'static>>,
    [u64; 4]
);
static_assertions::assert_eq_size!(PmdRef<'static, 'static, Mmu, Detached>, [u64; 3]);
static_assertions::assert_eq_size!(PmdVal, [u64; 2]);
static_assertions::assert_eq_size!(PmdRef<'static, 'static, Mmu, Unprotected>, [u64; 3]);
static_assertions::assert_not_impl_any!(crate::rcu::RcuGuard<'static, EpochRcu>: Send, Sync);
static_assertions::assert_not_impl_any!(crate::provenance::PteMap<'static, Mmu>: Send, Sync);
static_assertions::assert_not_impl_any!(
    crate::provenance::PteLocked<'static, Mmu, crate::provenance::Attached>: Send, Sync
);
static_assertions::assert_not_impl_any!(
    crate::provenance::PmdLockGuard<'static, 'static, Mmu>: Send, Sync
);
static_assertions::assert_not_impl_any!(
    PmdRef<'static, 'static, Mmu, CopiedUnderRcu<'static>>: Send, Sync
);
