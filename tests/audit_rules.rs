//! One pair of tests per audit rule: a deliberately broken sequence (an `unsafe` backend call
//! or laundering, or a step left out) makes the rule fire, and the same scenario through the
//! typed API keeps every rule at 0.
//!
//! | rule | broken sequence | typed sequence |
//! |---|---|---|
//! | I1/I9 use-after-free | `tests/audit.rs` (unprotected map of a freed table) | same file |
//! | I2 write into a detached table | another thread clears the slot under a held PTE lock (`inject_pmd`) | the remover blocks on the PTE lock |
//! | I5 GUP-fast pin kept after a change | unit tests in `src/mmu/gup.rs` (the pin is kept without its recheck) | `gup_fast` after the same change |
//! | I7 install without the PMD lock | the backend's `pmd_populate` called bare | `DetachedPmd::pmd_populate` under `pmd_lock` |
//! | I7 owner's write after publication | an installed table laundered into a `DetachedPmd` | a fresh table filled, then populated |
//! | I8 clear without both locks | the backend's `pmdp_collapse_flush` called bare | `pmdp_collapse_flush(&pml, ptl)` |
//! | I9 immediate free of a walkable table | a `Retired` table laundered to `Fresh` and freed | `tlb_remove_table_sync_one`, then `pte_free` |
//! | I11 removal without `page_table_check` | `pte_free_defer` of a table that maps a page, unchecked | `page_table_check_pte_clear_range` first |

mod common;

use std::mem;
use std::time::Duration;
use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
use typed_pgtable::mmu::{AuditRule, MmapReadGuard, Mmu, PMD_SIZE, VmaKind};
use typed_pgtable::provenance::{
    DetachedPmd, Fresh, InTable, PgtableBackend, PmdRef, Retired, pmd_lock, pmdp_collapse_flush,
    pte_offset_map_lock,
};

const VA: u64 = 0x20_1000;
/// A 2 MiB range with no PTE table yet.
const EMPTY: u64 = 0x40_0000;

/// An anonymous VMA over the 4 MiB from 0x20_0000, no page mapped yet.
fn mmu() -> Mmu {
    let mmu = common::scenario::mmu_with(1024, 1 << 30);
    mmu.mmap(0x20_0000, 2 * PMD_SIZE, VmaKind::Anon).unwrap();
    mmu
}

/// [`mmu`] with a page mapped at `VA`, so a PTE table is installed there.
fn mapped() -> Mmu {
    let mmu = mmu();
    mmu.map_page(VA).unwrap();
    mmu
}

/// Runs `f` on the pmd of `VA`, under the mmap read lock.
fn with_pmd_at_va<'m, R>(mmu: &'m Mmu, f: impl FnOnce(&PmdRef<'m, '_, Mmu, InTable>) -> R) -> R {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    f(&pmd)
}

/// Runs `f` under the mmap read lock with the pmd slot of `va` (upper levels allocated if
/// missing) and a fresh PTE table: the start of every install.
fn install_at<'m, R>(
    mmu: &'m Mmu,
    va: u64,
    f: impl FnOnce(&MmapReadGuard<'m>, &PmdRef<'m, '_, Mmu, InTable>, DetachedPmd<'m, Mmu, Fresh>) -> R,
) -> R {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_alloc(va).unwrap();
    let table = DetachedPmd::pte_alloc_one(mmu).unwrap();
    f(&mm, &pmd, table)
}

/// The typed install: `table` populated into `pmd` under its PMD lock.
fn populate_under_pmd_lock<'m>(
    mm: &MmapReadGuard<'m>,
    pmd: &PmdRef<'m, '_, Mmu, InTable>,
    table: DetachedPmd<'m, Mmu, Fresh>,
) {
    let pml = pmd_lock(pmd);
    table.pmd_populate(mm, &pml).map_err(|r| r.error).unwrap();
}

/// The violations of `rule`, after checking that no other rule fired.
fn fired(mmu: &Mmu, rule: AuditRule) -> u64 {
    for other in AuditRule::ALL.into_iter().filter(|r| *r != rule) {
        assert_eq!(
            mmu.audit().violations_of(other),
            0,
            "{} fired too: {:?}",
            other.name(),
            mmu.audit().report()
        );
    }
    let n = mmu.audit().violations_of(rule);
    assert_eq!(n, mmu.audit().violations());
    if n > 0 {
        assert!(mmu.audit().report().iter().all(|v| v.rule == rule));
    }
    n
}

/// No rule fired, and the tables are consistent.
fn clean(mmu: &Mmu) {
    mmu.rcu_barrier();
    common::assert_clean(mmu);
    assert_eq!(mmu.audit().violations(), 0);
}

mod i2_write_into_a_detached_table {
    use super::*;

    #[test]
    fn broken_the_slot_cleared_under_a_held_pte_lock() {
        let mmu = mapped();
        // A VMA read lock, so that the other thread's mmap write lock does not wait for us.
        let vma = mmu.lock_vma_under_rcu(VA).unwrap();
        let pmd = vma.pmd_offset(VA).unwrap().unwrap();
        let pte = pte_offset_map_lock(&pmd, VA).unwrap();
        common::on_another_thread(|| {
            // SAFETY: deliberately broken (the bug this rule catches): the slot is cleared
            // under the PMD lock alone while another thread holds the table's PTE lock and
            // believes it attached. The table is leaked, never freed, so no memory is reused.
            unsafe { mmu.inject_pmd(VA, 0) }.unwrap();
        });
        pte.set_pte(VA, pte.pte().mkold()).unwrap();
        drop(pte);
        assert_eq!(fired(&mmu, AuditRule::WriteDetached), 1);
    }

    #[test]
    fn typed_the_remover_waits_for_the_pte_lock() {
        let mmu = mapped();
        std::thread::scope(|s| {
            let mm = mmu.mmap_read_lock();
            let pmd = mm.pmd_offset(VA).unwrap().unwrap();
            let pte = pte_offset_map_lock(&pmd, VA).unwrap();
            let remover = s.spawn(|| mmu.retract_pte_table(VA).unwrap());
            // The retract blocks on the PTE lock (or has not started): either way the write
            // goes into the installed table.
            std::thread::sleep(Duration::from_millis(20));
            pte.set_pte(VA, pte.pte().mkold()).unwrap();
            drop(pte);
            drop(mm);
            assert_eq!(remover.join().unwrap(), 1);
        });
        clean(&mmu);
    }
}

mod i7_install_without_the_pmd_lock {
    use super::*;

    #[test]
    fn broken_the_backend_populate_called_bare() {
        let mmu = mmu();
        install_at(&mmu, EMPTY, |_, pmd, table| {
            // SAFETY: deliberately broken: the slot is empty and the table fresh, but no PMD
            // lock is held, so a concurrent installer could race this one. The slot owns the
            // table now.
            unsafe { mmu.pmd_populate(pmd.slot(), &table.table()) };
            mem::forget(table);
            assert_eq!(fired(&mmu, AuditRule::PopulateWithoutLock), 1);
        });
    }

    #[test]
    fn typed_populate_under_pmd_lock() {
        let mmu = mmu();
        install_at(&mmu, EMPTY, populate_under_pmd_lock);
        clean(&mmu);
    }
}

mod i7_owner_write_after_publication {
    use super::*;

    #[test]
    fn broken_an_installed_table_laundered_as_owned() {
        let mmu = mapped();
        with_pmd_at_va(&mmu, |pmd| {
            // SAFETY: deliberately broken: the slot still names the table, so "owning" it is a
            // lie, and the owner's lock-free write races every walker.
            let mut owned =
                unsafe { DetachedPmd::<Mmu, Fresh>::from_pmd(&mmu, pmd.pmd_val()) }.unwrap();
            let old = pte_offset_map_lock(pmd, VA).unwrap().pte();
            owned
                .pte_offset_map_mut(VA)
                .set_pte(VA, old.mkold())
                .unwrap();
            mem::forget(owned);
            assert_eq!(fired(&mmu, AuditRule::WriteAfterPublish), 1);
        });
    }

    #[test]
    fn typed_fill_then_populate() {
        let mmu = mmu();
        let page = mmu.alloc_data_frame().unwrap();
        let pte = typed_pgtable::mmu::Pte::from_raw(
            (page.pfn() << 12) | typed_pgtable::mmu::PRESENT | typed_pgtable::mmu::USER,
        );
        install_at(&mmu, VA, |mm, pmd, mut table| {
            table.pte_offset_map_mut(VA).set_pte(VA, pte).unwrap();
            populate_under_pmd_lock(mm, pmd, table);
        });
        drop(page);
        assert_eq!(mmu.translate(VA).unwrap(), Some(pte.pfn().unwrap() << 12));
        clean(&mmu);
    }
}

/// Detaches the table at `VA` through the typed API: the PMD lock and the PTE lock, then
/// `pmdp_collapse_flush`.
fn retire(mmu: &Mmu) -> DetachedPmd<'_, Mmu, Retired> {
    with_pmd_at_va(mmu, |pmd| {
        let pml = pmd_lock(pmd);
        let ptl = pte_offset_map_lock(pmd, VA).unwrap();
        pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap()
    })
}

/// [`retire`], then `page_table_check` of the retired table's range.
fn retire_checked(mmu: &Mmu) -> DetachedPmd<'_, Mmu, Retired> {
    let retired = retire(mmu);
    page_table_check_pte_clear_range(mmu, VA, &retired.pmd());
    retired
}

mod i8_clear_without_both_locks {
    use super::*;

    #[test]
    fn broken_the_backend_clear_called_bare() {
        let mmu = mapped();
        with_pmd_at_va(&mmu, |pmd| {
            // SAFETY: deliberately broken: neither the PMD lock nor the PTE lock is held, so a
            // locked walker may be writing into the table right now. The table is leaked.
            let value = unsafe { mmu.pmdp_collapse_flush(pmd.slot()) };
            assert!(mmu.pmd_table(&value).is_ok());
            assert_eq!(fired(&mmu, AuditRule::ClearWithoutLocks), 1);
        });
    }

    #[test]
    fn typed_clear_under_both_locks() {
        let mmu = mapped();
        // `retire` clears the slot through `pmdp_collapse_flush(&pml, ptl)`.
        retire_checked(&mmu).pte_free_defer();
        clean(&mmu);
    }
}

mod i9_immediate_free_of_a_walkable_table {
    use super::*;

    #[test]
    fn broken_a_retired_table_laundered_and_freed_at_once() {
        let mmu = mapped();
        let retired = retire_checked(&mmu);
        let value = retired.pmd_val();
        mem::forget(retired);
        // SAFETY: deliberately broken: lockless walkers that read the slot before the clear
        // may still hold the table; no grace period has passed. No walker exists here, so no
        // memory is actually misused.
        let fresh = unsafe { DetachedPmd::<Mmu, Fresh>::from_pmd(&mmu, value) }.unwrap();
        fresh.pte_free();
        assert_eq!(fired(&mmu, AuditRule::FreeWithoutGrace), 1);
    }

    #[test]
    fn typed_sync_then_free() {
        let mmu = mapped();
        retire_checked(&mmu).tlb_remove_table_sync_one().pte_free();
        clean(&mmu);
    }
}

mod i11_removal_without_page_table_check {
    use super::*;

    #[test]
    fn broken_a_mapping_table_freed_unchecked() {
        let mmu = mapped();
        retire(&mmu).pte_free_defer();
        mmu.rcu_barrier();
        assert_eq!(fired(&mmu, AuditRule::UncheckedRemoval), 1);
    }

    #[test]
    fn typed_checked_then_freed() {
        let mmu = mapped();
        let retired = retire(&mmu);
        let report = page_table_check_pte_clear_range(&mmu, VA, &retired.pmd());
        assert_eq!(report.present, 1);
        retired.pte_free_defer();
        clean(&mmu);
    }

    #[test]
    fn an_empty_table_needs_no_check() {
        // PT_RECLAIM frees empty tables without the check, as the kernel does.
        let mmu = mapped();
        mmu.unmap_page(VA).unwrap();
        retire(&mmu).pte_free_defer();
        clean(&mmu);
    }
}
