//! Unit tests for every MMU operation that runs the kernel's page-table protocol through the
//! typed API: the fault path, THP map/split/zap, `page_table_check`, khugepaged (retract and
//! both collapses), GUP-fast, `MADV_DONTNEED` with PT_RECLAIM, `munmap`, `move_normal_pmd`,
//! the VMA model, the counters and the frame accounting.
//!
//! Each operation is checked on its success path, on each typed error it can return (with the
//! `dump()` unchanged where the crate promises it), and on its race paths, made deterministic
//! by holding a lock on one thread while another thread runs into it.
//!
//! Every test ends with [`finish`]: after `rcu_barrier`, the audit has seen no page-table
//! use-after-free and `check_tables()` finds nothing wrong.

use std::sync::mpsc;
use std::time::Duration;
use typed_pgtable::mmu::check::{PtcReport, page_table_check_pte_clear_range};
use typed_pgtable::mmu::{
    ADDR_MASK, CollapseOutcome, DIRTY, FrameKind, Mmu, MmuConfig, MmuDump, PAGE_SIZE, PMD_SIZE,
    POISON, PmdKind, Pte, SplitOutcome, VmaKind, ZapStats, huge_entry, migration_entry,
    table_entry,
};
use typed_pgtable::provenance::{
    DetachedPmd, pmd_lock, pte_offset_map, pte_offset_map_lock, pte_offset_map_ro_nolock,
    pte_offset_map_rw_nolock,
};
use typed_pgtable::{Error, NoMap};

const GIB: u64 = 1 << 30;
const ENTRIES: u64 = 512;

/// The start of 2 MiB region `n`.
const fn region(n: u64) -> u64 {
    n * PMD_SIZE
}

/// An MMU with `frames` frames and 1 GiB of virtual space (one PMD table).
fn mmu(frames: usize) -> Mmu {
    Mmu::new(MmuConfig {
        frames,
        va_limit: GIB,
    })
    .expect("valid config")
}

/// What the pmd for `va` holds (`None` if an upper level is missing).
fn pmd_kind(mmu: &Mmu, va: u64) -> Option<PmdKind> {
    let mm = mmu.mmap_read_lock();
    mm.pmd_offset(va).unwrap().map(|p| p.pmd_val().kind())
}

/// The PTE table installed for `va`.
#[track_caller]
fn table_of(mmu: &Mmu, va: u64) -> u64 {
    match pmd_kind(mmu, va) {
        Some(PmdKind::Table(t)) => t,
        other => panic!("expected a PTE table for {va:#x}, found {other:?}"),
    }
}

/// All 512 PTEs of the table installed for `va`.
#[track_caller]
fn ptes(mmu: &Mmu, va: u64) -> Vec<Pte> {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(va).unwrap().expect("upper levels exist");
    let map = pte_offset_map(&pmd, va).expect("a PTE table");
    map.entries().collect()
}

/// The PMD table frame that holds the pmd for `va`, from a dump.
fn pmd_table_frame(d: &MmuDump, va: u64) -> Option<u64> {
    d.entries
        .iter()
        .find(|&&(level, a, _)| level == 3 && a == va & !(GIB - 1))
        .map(|&(_, _, raw)| (raw & ADDR_MASK) >> 12)
}

/// The tables deposited on the pmd for `va`.
fn deposits_at(mmu: &Mmu, va: u64) -> Vec<u64> {
    let d = mmu.dump();
    let Some(pmdt) = pmd_table_frame(&d, va) else {
        return Vec::new();
    };
    let index = ((va >> 21) % ENTRIES) as u16;
    d.deposits
        .iter()
        .filter(|&&(t, i, _)| t == pmdt && i == index)
        .map(|&(_, _, table)| table)
        .collect()
}

/// Upper-level tables (PUD and PMD) in a dump: never freed while the MMU lives.
fn upper_tables(d: &MmuDump) -> usize {
    d.entries
        .iter()
        .filter(|&&(level, _, _)| level == 4 || level == 3)
        .count()
}

/// Runs `f` and asserts that the MMU's dump is the same before and after.
#[track_caller]
fn unchanged<T>(mmu: &Mmu, f: impl FnOnce(&Mmu) -> T) -> T {
    mmu.rcu_barrier();
    let before = mmu.dump();
    let out = f(mmu);
    mmu.rcu_barrier();
    assert_eq!(before, mmu.dump(), "a failing call changed the MMU");
    out
}

/// The end of every test: no use-after-free, consistent tables.
#[track_caller]
fn finish(mmu: &Mmu) {
    mmu.rcu_barrier();
    assert_eq!(
        mmu.audit().violations(),
        0,
        "page-table use-after-free: {:?}",
        mmu.audit().report()
    );
    assert_eq!(mmu.check_tables(), Vec::<String>::new());
}

fn is_free(mmu: &Mmu, pfn: u64) -> bool {
    mmu.frame_kind(pfn) == Some(FrameKind::Free)
}

/// Maps `n` consecutive 4 KiB pages from `va`; returns their frames.
fn map_pages(mmu: &Mmu, va: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| mmu.map_page(va + i * PAGE_SIZE).unwrap())
        .collect()
}

// =============================================================================================
// The fault path
// =============================================================================================

#[test]
fn map_page_installs_a_table_then_the_page() {
    let mmu = mmu(1024);
    let s0 = mmu.stats();
    let pfn = mmu.map_page(region(1) + 0x3000).unwrap();
    let s1 = mmu.stats();
    assert_eq!(s1.tables_installed, s0.tables_installed + 1);
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now);
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(pfn), 1);
    let t = table_of(&mmu, region(1));
    assert_eq!(mmu.frame_kind(t), Some(FrameKind::Pte));
    assert_eq!(
        mmu.translate(region(1) + 0x3abc),
        Ok(Some((pfn << 12) | 0xabc))
    );
    // Frame 0 and the PGD, then PUD + PMD + PTE table + the page.
    assert_eq!(mmu.free_frames(), 1024 - 2 - 4);
    assert_eq!(mmu.stats().free_frames, mmu.free_frames());
    // A second page in the same table installs nothing.
    let pfn2 = mmu.map_page(region(1) + 0x4000).unwrap();
    assert_ne!(pfn, pfn2);
    assert_eq!(mmu.stats().tables_installed, s1.tables_installed);
    assert_eq!(table_of(&mmu, region(1)), t);
    // Without a VMA the page is not anonymous.
    assert_eq!(ptes(&mmu, region(1))[3], Pte::page(pfn));
    finish(&mmu);
}

#[test]
fn map_page_in_anon_and_file_vmas() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(2), PMD_SIZE, VmaKind::File).unwrap();
    let a = mmu.map_page(region(1)).unwrap();
    let f = mmu.map_page(region(2)).unwrap();
    assert_eq!(ptes(&mmu, region(1))[0], Pte::anon_page(a));
    assert!(ptes(&mmu, region(1))[0].is_anon());
    assert_eq!(ptes(&mmu, region(2))[0], Pte::page(f));
    // The anonymous fault prepared the anon VMA's anon_vma; the file fault did not.
    assert!(mmu.find_vma(region(1)).unwrap().anon_vma);
    assert!(!mmu.find_vma(region(2)).unwrap().anon_vma);
    finish(&mmu);
}

#[test]
fn map_page_errors_leave_the_mmu_unchanged() {
    let mmu = mmu(2048);
    mmu.map_page(region(1)).unwrap();
    mmu.map_huge(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(region(1))),
        Err(Error::AlreadyMapped { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(region(2) + 0x5000)),
        Err(Error::HugeInTheWay {
            addr: region(2) + 0x5000
        })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(region(1) + 1)),
        Err(Error::Misaligned {
            addr: region(1) + 1,
            align: PAGE_SIZE
        })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(GIB)),
        Err(Error::OutOfRange {
            addr: GIB,
            limit: GIB
        })
    );
    // A migration or non-present pmd is "huge in the way" too.
    mmu.map_huge(region(3)).unwrap();
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    let old = unsafe { mmu.inject_pmd(region(3), migration_entry(9)) }.unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(region(3))),
        Err(Error::HugeInTheWay { addr: region(3) })
    );
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(3), old) }.unwrap();
    finish(&mmu);
}

#[test]
fn map_page_out_of_frames_changes_nothing() {
    let mmu = mmu(16);
    // 14 frames free; a page in a new region needs PUD, PMD, PTE and the page.
    let mut held = Vec::new();
    while mmu.free_frames() > 3 {
        held.push(mmu.alloc_data_frame().unwrap());
    }
    let err = unchanged(&mmu, |m| m.map_page(0x1000)).unwrap_err();
    assert_eq!(err, Error::OutOfFrames { needed: 4, free: 3 });
    // With the upper levels present, a table and a page are needed.
    drop(held.pop());
    mmu.rcu_barrier();
    mmu.map_page(0x1000).unwrap();
    assert_eq!(mmu.free_frames(), 0);
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(0x2000)),
        Err(Error::OutOfFrames { needed: 1, free: 0 })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_page(region(1))),
        Err(Error::OutOfFrames { needed: 2, free: 0 })
    );
    drop(held);
    finish(&mmu);
}

#[test]
fn map_pages_is_all_or_nothing() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    // Across a 2 MiB boundary, out of a VMA into none.
    let pages = mmu.map_pages(region(2) - 2 * PAGE_SIZE, 4).unwrap();
    assert_eq!(pages.len(), 4);
    for (i, &pfn) in pages.iter().enumerate() {
        let va = region(2) - 2 * PAGE_SIZE + i as u64 * PAGE_SIZE;
        assert_eq!(mmu.translate(va), Ok(Some(pfn << 12)));
    }
    assert!(ptes(&mmu, region(1))[511].is_anon());
    assert!(!ptes(&mmu, region(2))[0].is_anon());
    assert_eq!(
        unchanged(&mmu, |m| m.map_pages(region(2) - 4 * PAGE_SIZE, 4)),
        Err(Error::AlreadyMapped {
            addr: region(2) - 2 * PAGE_SIZE
        })
    );
    mmu.map_huge(region(3)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.map_pages(region(3) - PAGE_SIZE, 2)),
        Err(Error::HugeInTheWay { addr: region(3) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_pages(region(4), 0)),
        Err(Error::EmptyRange { addr: region(4) })
    );
    let free = mmu.free_frames();
    // `free` pages need `free` data frames and three PTE tables (2 MiB regions 5 to 7).
    assert!(free > 2 * ENTRIES as usize && free < 3 * ENTRIES as usize);
    let err = unchanged(&mmu, |m| m.map_pages(region(5), free)).unwrap_err();
    assert_eq!(
        err,
        Error::OutOfFrames {
            needed: free + 3,
            free
        }
    );
    finish(&mmu);
}

#[test]
fn pte_alloc_installs_one_empty_table() {
    let mmu = mmu(1024);
    let s0 = mmu.stats();
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pte_alloc(region(1) + 0x7000).unwrap();
        assert!(matches!(pmd.pmd_val().kind(), PmdKind::Table(_)));
        // Idempotent: a second call finds the table.
        let again = mm.pte_alloc(region(1)).unwrap();
        assert_eq!(again.pmd_val().raw(), pmd.pmd_val().raw());
        let map = pte_offset_map(&pmd, region(1)).unwrap();
        assert!(map.entries().all(|p| p.is_none()));
    }
    assert_eq!(mmu.stats().tables_installed, s0.tables_installed + 1);
    // On a huge pmd it installs nothing and leaves the huge page.
    mmu.map_huge(region(2)).unwrap();
    unchanged(&mmu, |m| {
        let mm = m.mmap_read_lock();
        let pmd = mm.pte_alloc(region(2)).unwrap();
        assert!(matches!(pmd.pmd_val().kind(), PmdKind::Huge(_)));
    });
    // Bad addresses.
    {
        let mm = mmu.mmap_read_lock();
        assert_eq!(
            mm.pte_alloc(GIB).err(),
            Some(Error::OutOfRange {
                addr: GIB,
                limit: GIB
            })
        );
    }
    finish(&mmu);
}

#[test]
fn pte_alloc_out_of_frames_changes_nothing() {
    let mmu = Mmu::new(MmuConfig {
        frames: 16,
        va_limit: 2 * GIB,
    })
    .unwrap();
    mmu.map_page(0x1000).unwrap();
    let mut held = Vec::new();
    while mmu.free_frames() > 1 {
        held.push(mmu.alloc_data_frame().unwrap());
    }
    // The second GiB needs a PMD table and a PTE table; one frame is free.
    let err = unchanged(&mmu, |m| {
        let mm = m.mmap_read_lock();
        mm.pte_alloc(GIB).map(|_| ())
    });
    // Both tables are reserved before anything changes.
    assert_eq!(err, Err(Error::OutOfFrames { needed: 2, free: 1 }));
    drop(held);
    finish(&mmu);
}

#[test]
fn pmd_install_winner_publishes_loser_frees_at_once() {
    let mmu = mmu(1024);
    let s0 = mmu.stats();
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_alloc(region(1)).unwrap();
        let t1 = DetachedPmd::pte_alloc_one(&mmu).unwrap();
        let t1_pfn = t1.table().pfn;
        assert!(mm.pmd_install(&pmd, t1), "the slot was none");
        assert_eq!(pmd.pmd_val().kind(), PmdKind::Table(t1_pfn));

        // The race: another fault allocated its table before seeing the slot populated.
        let free = mmu.free_frames();
        let t2 = DetachedPmd::pte_alloc_one(&mmu).unwrap();
        let t2_pfn = t2.table().pfn;
        assert_eq!(mmu.free_frames(), free - 1);
        assert!(!mm.pmd_install(&pmd, t2), "the slot was populated");
        // The loser's table was never published: freed at once, no frame leaked.
        assert_eq!(mmu.free_frames(), free);
        assert!(is_free(&mmu, t2_pfn));
        assert_eq!(pmd.pmd_val().kind(), PmdKind::Table(t1_pfn));
    }
    let s1 = mmu.stats();
    assert_eq!(s1.tables_installed, s0.tables_installed + 1);
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred);
    finish(&mmu);
}

#[test]
fn pmd_install_on_a_huge_pmd_loses() {
    let mmu = mmu(2048);
    mmu.map_huge(region(1)).unwrap();
    let before = mmu.dump();
    let freed_now = mmu.stats().tables_freed_now;
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(region(1)).unwrap().unwrap();
        let t = DetachedPmd::pte_alloc_one(&mmu).unwrap();
        assert!(!mm.pmd_install(&pmd, t));
    }
    assert_eq!(mmu.stats().tables_freed_now, freed_now + 1);
    assert_eq!(mmu.dump(), before);
    finish(&mmu);
}

/// One round of the `pte_offset_map_lock` retry: a thread holds the PTE lock of the table at
/// `va`, a waiter maps that table and spins on its lock, and the pmd is rewritten to `new`
/// (with `inject_pmd`: mmap write lock and PMD lock, which both threads allow because they
/// walk under the VMA lock) before the lock is released. Returns the pmd value and the PTE the
/// waiter's lock came back with, and the audit checks it made (two per attempt: map and lock).
fn retry_round(mmu: &Mmu, va: u64, new: u64) -> (u64, Pte, u64) {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let vg = mmu.lock_vma_under_rcu(va).unwrap();
            let pmd = vg.pmd_offset(va).unwrap().unwrap();
            let ptl = pte_offset_map_lock(&pmd, va).unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(ptl);
        });
        locked_rx.recv().unwrap();
        let waiter = s.spawn(move || {
            let vg = mmu.lock_vma_under_rcu(va).unwrap();
            let pmd = vg.pmd_offset(va).unwrap().unwrap();
            started_tx.send(()).unwrap();
            let before = mmu.audit().checks();
            let ptl = pte_offset_map_lock(&pmd, va).unwrap();
            let checks = mmu.audit().checks() - before;
            (ptl.pmdval().raw(), ptl.pte(), checks)
        });
        started_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // The waiter has mapped the old value and spins on the old table's lock.
        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
        unsafe { mmu.inject_pmd(va, new) }.unwrap();
        release_tx.send(()).unwrap();
        waiter.join().unwrap()
    })
}

/// `pte_offset_map_lock` maps the table, then waits for its lock; if the pmd changed
/// meanwhile, the recheck under the lock fails and it maps again. Made deterministic with
/// [`retry_round`]: the waiter must come back with the lock for the *current* pmd value after
/// exactly one retry. Twice: the same table under another pmd value, and another table
/// swapped into the slot (the table of region 2, with another page).
#[test]
fn pte_offset_map_lock_retries_when_the_pmd_changes_under_it() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let va = region(1) + 0x5000;
    let pfn = mmu.map_page(va).unwrap();
    let other = mmu.map_page(region(2) + 0x5000).unwrap();
    let t1 = table_of(&mmu, va);
    let t2 = table_of(&mmu, region(2));
    let original = table_entry(t1);
    for (new, expect) in [
        (original | DIRTY, Pte::anon_page(pfn)),
        (table_entry(t2), Pte::page(other)),
    ] {
        let mut retried = false;
        for _ in 0..5 {
            let (raw, pte, checks) = retry_round(&mmu, va, new);
            // Put the original table back (the swapped-in one is region 2's).
            // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
            unsafe { mmu.inject_pmd(va, original) }.unwrap();
            assert_eq!(raw, new, "the lock is for the current pmd value");
            assert_eq!(pte, expect, "and reads the current table");
            assert!(checks == 2 || checks == 4, "{checks} audit checks");
            if checks == 4 {
                retried = true;
                break;
            }
        }
        assert!(
            retried,
            "the waiter never mapped the old value before the change"
        );
    }
    finish(&mmu);
}

#[test]
fn cow_fault_replaces_a_file_page_with_an_anonymous_one() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let va = region(1) + 0x2000;
    let old = mmu.map_page(va).unwrap();
    assert!(!mmu.find_vma(va).unwrap().anon_vma);
    let new = mmu.cow_fault(va).unwrap();
    assert_ne!(new, old);
    assert!(mmu.find_vma(va).unwrap().anon_vma, "anon_vma prepared");
    assert_eq!(ptes(&mmu, va)[2], Pte::anon_page(new));
    assert_eq!(mmu.translate(va + 8), Ok(Some((new << 12) | 8)));
    // The file page goes after a grace period.
    mmu.rcu_barrier();
    assert!(is_free(&mmu, old));
    assert_eq!(mmu.page_refs(new), 1);
    // Copying a zero-page PTE (special) drops no reference to the zero page.
    mmu.mmap(region(2), PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_huge_zero(region(2)).unwrap();
    assert_eq!(mmu.split_huge_pmd(region(2)), Ok(SplitOutcome::ZeroSplit));
    let zero = mmu.zero_pfn().unwrap();
    let copy = mmu.cow_fault(region(2) + PAGE_SIZE).unwrap();
    assert_eq!(ptes(&mmu, region(2))[1], Pte::anon_page(copy));
    assert_eq!(ptes(&mmu, region(2))[2], Pte::special(zero));
    mmu.rcu_barrier();
    assert_eq!(mmu.page_refs(zero), 1);
    finish(&mmu);
}

#[test]
fn cow_fault_errors() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    mmu.mmap(region(2), PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.map_page(region(2)).unwrap();
    mmu.map_page(region(3)).unwrap();
    // Outside a file VMA.
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(2))),
        Err(Error::NotInVma { addr: region(2) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(3))),
        Err(Error::NotInVma { addr: region(3) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(1) + 3)),
        Err(Error::Misaligned {
            addr: region(1) + 3,
            align: PAGE_SIZE
        })
    );
    // No table, no page, an anonymous page already (the VMA's anon_vma is prepared before
    // the page is looked at: see `cow_fault_failure_leaves_the_vma_alone`).
    assert_eq!(
        mmu.cow_fault(region(1)),
        Err(Error::NotMapped { addr: region(1) })
    );
    mmu.map_page(region(1)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(1) + PAGE_SIZE)),
        Err(Error::NotMapped {
            addr: region(1) + PAGE_SIZE
        })
    );
    mmu.cow_fault(region(1)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(1))),
        Err(Error::NotMapped { addr: region(1) })
    );
    // A huge page in a file VMA.
    mmu.mmap(region(4), PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_huge(region(4)).unwrap();
    assert_eq!(
        mmu.cow_fault(region(4) + PAGE_SIZE),
        Err(Error::HugeInTheWay {
            addr: region(4) + PAGE_SIZE
        })
    );
    finish(&mmu);
}

#[test]
fn cow_fault_failure_leaves_the_vma_alone() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_page(region(1) + PAGE_SIZE).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(region(1))),
        Err(Error::NotMapped { addr: region(1) })
    );
    assert!(!mmu.find_vma(region(1)).unwrap().anon_vma);
    assert_eq!(mmu.retract_page_tables(region(1)), Ok(1));
    finish(&mmu);
}

#[test]
fn cow_fault_out_of_frames() {
    let mmu = mmu(16);
    mmu.mmap(0, PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_page(0x1000).unwrap();
    mmu.cow_fault(0x1000).unwrap(); // anon_vma is prepared now
    mmu.map_page(0x2000).unwrap();
    mmu.rcu_barrier();
    let mut held = Vec::new();
    while let Ok(pfn) = mmu.alloc_data_frame() {
        held.push(pfn);
    }
    assert_eq!(
        unchanged(&mmu, |m| m.cow_fault(0x2000)),
        Err(Error::OutOfFrames { needed: 1, free: 0 })
    );
    drop(held);
    finish(&mmu);
}

// =============================================================================================
// THP: map, split, zap
// =============================================================================================

#[test]
fn map_huge_deposits_a_table() {
    let mmu = mmu(2048);
    let free = mmu.free_frames();
    let s0 = mmu.stats();
    let head = mmu.map_huge(region(1)).unwrap();
    assert_eq!(head % ENTRIES, 0);
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::Huge(head)));
    let dep = deposits_at(&mmu, region(1));
    assert_eq!(dep.len(), 1, "one deposited table");
    assert_eq!(mmu.frame_kind(dep[0]), Some(FrameKind::Pte));
    // PUD, PMD, the deposit and 512 data frames.
    assert_eq!(mmu.free_frames(), free - 3 - 512);
    assert_eq!(mmu.page_refs(head), 1);
    assert!((head..head + ENTRIES).all(|p| mmu.frame_kind(p) == Some(FrameKind::Data)));
    for off in [0, 0x1234, PMD_SIZE - 1] {
        assert_eq!(mmu.translate(region(1) + off), Ok(Some((head << 12) + off)));
    }
    // The deposit is not a published table.
    assert_eq!(mmu.stats().tables_installed, s0.tables_installed);
    finish(&mmu);
}

#[test]
fn map_huge_errors() {
    let mmu = mmu(1024);
    mmu.map_huge(region(1)).unwrap();
    mmu.map_page(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.map_huge(region(1))),
        Err(Error::AlreadyMapped { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_huge(region(2))),
        Err(Error::TableInTheWay { addr: region(2) })
    );
    // An empty table is in the way too.
    mmu.unmap_page(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.map_huge(region(2))),
        Err(Error::TableInTheWay { addr: region(2) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.map_huge(region(3) + PAGE_SIZE)),
        Err(Error::Misaligned {
            addr: region(3) + PAGE_SIZE,
            align: PMD_SIZE
        })
    );
    // Frames 0..512 hold the tables and frames 512..1024 the huge page: no free 2 MiB run.
    let err = unchanged(&mmu, |m| m.map_huge(region(3))).unwrap_err();
    assert!(
        matches!(err, Error::OutOfFrames { needed: 512, .. }),
        "{err:?}"
    );
    let err = unchanged(&mmu, |m| m.map_huge_zero(region(3))).unwrap_err();
    assert!(
        matches!(err, Error::OutOfFrames { needed: 512, .. }),
        "{err:?}"
    );
    finish(&mmu);
}

#[test]
fn map_huge_zero_is_shared_and_kept() {
    let mmu = mmu(2048);
    let z = mmu.map_huge_zero(region(1)).unwrap();
    let free = mmu.free_frames();
    assert_eq!(mmu.map_huge_zero(region(2)), Ok(z));
    // The second mapping costs only its deposit.
    assert_eq!(mmu.free_frames(), free - 1);
    assert_eq!(mmu.translate(region(2) + 0x42), Ok(Some((z << 12) + 0x42)));
    assert_eq!(mmu.unmap_huge(region(1)), Ok(z));
    assert_eq!(mmu.unmap_huge(region(2)), Ok(z));
    mmu.rcu_barrier();
    // Never freed: the MMU keeps it (and its one reference) for its life.
    assert_eq!(mmu.frame_kind(z), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(z), 1);
    assert_eq!(mmu.map_huge_zero(region(3)), Ok(z));
    finish(&mmu);
}

#[test]
fn split_of_a_present_thp() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let head = mmu.map_huge(region(1)).unwrap();
    let deposit = deposits_at(&mmu, region(1));
    assert_eq!(deposit.len(), 1);
    let probes = [0, 0x1234, 0x10_0000, PMD_SIZE - 1];
    let before: Vec<_> = probes
        .iter()
        .map(|&o| mmu.translate(region(1) + o).unwrap())
        .collect();
    let free = mmu.free_frames();
    let s0 = mmu.stats();

    assert_eq!(
        mmu.split_huge_pmd(region(1) + 0x3000),
        Ok(SplitOutcome::Split)
    );

    // The deposited table was withdrawn and is now the installed one.
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::Table(deposit[0])));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    let p = ptes(&mmu, region(1));
    for (i, pte) in p.iter().enumerate() {
        assert_eq!(*pte, Pte::anon_page(head + i as u64), "pte {i}");
    }
    let after: Vec<_> = probes
        .iter()
        .map(|&o| mmu.translate(region(1) + o).unwrap())
        .collect();
    assert_eq!(before, after);
    // The folio stays whole; each of the 512 PTEs now holds a reference to it.
    assert!((head..head + ENTRIES).all(|pfn| mmu.page_refs(pfn) == ENTRIES as u32));
    assert_eq!(mmu.free_frames(), free, "no frame allocated or freed");
    let s1 = mmu.stats();
    assert_eq!(s1.splits, s0.splits + 1);
    assert_eq!(s1.tables_installed, s0.tables_installed + 1);
    // Zapping a base page drops one reference to the folio; the folio stays until the last.
    mmu.unmap_page(region(1) + 7 * PAGE_SIZE).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(head + 7), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(head), ENTRIES as u32 - 1);
    // Outside a VMA the PTEs are not anonymous.
    let h2 = mmu.map_huge(region(2)).unwrap();
    assert_eq!(mmu.split_huge_pmd(region(2)), Ok(SplitOutcome::Split));
    assert_eq!(ptes(&mmu, region(2))[511], Pte::page(h2 + 511));
    finish(&mmu);
}

#[test]
fn split_of_the_huge_zero_page() {
    let mmu = mmu(2048);
    let hz = mmu.map_huge_zero(region(1)).unwrap();
    let zero = mmu.zero_pfn().unwrap();
    assert_ne!(zero, hz);
    let deposit = deposits_at(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(mmu.split_huge_pmd(region(1)), Ok(SplitOutcome::ZeroSplit));
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::Table(deposit[0])));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    let p = ptes(&mmu, region(1));
    assert!(p.iter().all(|&pte| pte == Pte::special(zero)));
    assert!(p[0].is_special() && p[0].is_present());
    assert_eq!(
        mmu.translate(region(1) + 0x5008),
        Ok(Some((zero << 12) | 8))
    );
    assert_eq!(mmu.stats().splits, s0.splits + 1);
    // Special PTEs hold no reference: zapping them leaves the zero page alone.
    let stats = mmu.madvise_dontneed(region(1), PMD_SIZE, false).unwrap();
    assert_eq!(stats.pages, ENTRIES);
    mmu.rcu_barrier();
    assert_eq!(mmu.page_refs(zero), 1);
    assert_eq!(mmu.page_refs(hz), 1);
    finish(&mmu);
}

#[test]
fn split_of_a_migration_entry() {
    let mmu = mmu(2048);
    let head = mmu.map_huge(region(1)).unwrap();
    let deposit = deposits_at(&mmu, region(1));
    // The page is being migrated: the pmd becomes a migration entry (the page's reference
    // moves to the migration, here: dropped by hand).
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    let old = unsafe { mmu.inject_pmd(region(1), migration_entry(0x777)) }.unwrap();
    assert_eq!(old & ADDR_MASK, head << 12);
    // SAFETY: the test gives up a reference that the injected entry no longer holds.
    unsafe { mmu.put_page(head) };
    mmu.rcu_barrier();
    assert_eq!(
        mmu.split_huge_pmd(region(1)),
        Ok(SplitOutcome::MigrationSplit)
    );
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::Table(deposit[0])));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    let p = ptes(&mmu, region(1));
    for (i, pte) in p.iter().enumerate() {
        assert_eq!(*pte, Pte::migration(0x777 + i as u64));
        assert!(!pte.is_present());
    }
    assert_eq!(mmu.translate(region(1)), Ok(None));
    assert_eq!(mmu.gup_fast(region(1), 1).unwrap().len(), 0);
    finish(&mmu);
}

#[test]
fn split_out_of_frames_is_an_error() {
    let mmu = mmu(2048);
    let hz = mmu.map_huge_zero(region(1)).unwrap();
    // The zero page came with the huge zero page: a zero split never allocates it.
    assert!(mmu.zero_page().is_some());
    // A huge pmd with no deposited table (placed by hand): its split must allocate a table.
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(2), huge_entry(hz)) }.unwrap();
    let mut held = Vec::new();
    while let Ok(pfn) = mmu.alloc_data_frame() {
        held.push(pfn);
    }
    let out = unchanged(&mmu, |m| m.split_huge_pmd(region(2)));
    assert!(matches!(pmd_kind(&mmu, region(2)), Some(PmdKind::Huge(_))));
    assert_eq!(out, Err(Error::OutOfFrames { needed: 1, free: 0 }));
    // The deposited one splits without allocating anything.
    assert_eq!(mmu.split_huge_pmd(region(1)), Ok(SplitOutcome::ZeroSplit));
    drop(held);
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(2), 0) }.unwrap();
    finish(&mmu);
}

#[test]
fn munmap_zaps_a_huge_migration_entry() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let free = mmu.free_frames();
    let head = mmu.map_huge(region(1)).unwrap();
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(1), migration_entry(0x42)) }.unwrap();
    // SAFETY: the test gives up a reference that the injected entry no longer holds.
    unsafe { mmu.put_page(head) };
    assert_eq!(mmu.munmap(region(1), PMD_SIZE), Ok(0));
    mmu.rcu_barrier();
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    // Only the upper levels (PUD and PMD table) remain.
    assert_eq!(mmu.free_frames(), free - 2);
    finish(&mmu);
}

#[test]
fn split_of_something_not_huge() {
    let mmu = mmu(1024);
    // No upper levels, a none pmd, a PTE table.
    assert_eq!(
        unchanged(&mmu, |m| m.split_huge_pmd(region(1))),
        Ok(SplitOutcome::NotHuge)
    );
    mmu.map_page(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.split_huge_pmd(region(1))),
        Ok(SplitOutcome::NotHuge)
    );
    assert_eq!(
        unchanged(&mmu, |m| m.split_huge_pmd(region(2))),
        Ok(SplitOutcome::NotHuge)
    );
    assert_eq!(
        unchanged(&mmu, |m| m.split_huge_pmd(GIB)),
        Err(Error::OutOfRange {
            addr: GIB,
            limit: GIB
        })
    );
    assert_eq!(mmu.stats().splits, 0);
    finish(&mmu);
}

#[test]
fn unmap_huge_frees_the_deposit_at_once_and_the_page_later() {
    let mmu = mmu(2048);
    let free = mmu.free_frames();
    let head = mmu.map_huge(region(1)).unwrap();
    let deposit = deposits_at(&mmu, region(1))[0];
    let s0 = mmu.stats();
    assert_eq!(mmu.unmap_huge(region(1)), Ok(head));
    // zap_deposited_table: never visible to walkers, freed now.
    let s1 = mmu.stats();
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred);
    assert!(is_free(&mmu, deposit));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    assert_eq!(mmu.translate(region(1)), Ok(None));
    mmu.rcu_barrier();
    assert!((head..head + ENTRIES).all(|p| is_free(&mmu, p)));
    // Only the upper levels remain.
    assert_eq!(mmu.free_frames(), free - 2);
    finish(&mmu);
}

#[test]
fn unmap_huge_errors() {
    let mmu = mmu(2048);
    assert_eq!(
        unchanged(&mmu, |m| m.unmap_huge(region(1))),
        Err(Error::NotMapped { addr: region(1) })
    );
    mmu.map_page(region(1)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.unmap_huge(region(1))),
        Err(Error::TableInTheWay { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.unmap_huge(region(2))),
        Err(Error::NotMapped { addr: region(2) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.unmap_huge(region(2) + PAGE_SIZE)),
        Err(Error::Misaligned {
            addr: region(2) + PAGE_SIZE,
            align: PMD_SIZE
        })
    );
    finish(&mmu);
}

#[test]
fn page_table_check_counts_a_detached_table() {
    let mmu = mmu(1024);
    let a = mmu.alloc_data_frame().unwrap();
    let b = mmu.alloc_data_frame().unwrap();
    let zero = mmu.zero_pfn().unwrap();
    let mut t = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    {
        let map = t.pte_offset_map_mut(0);
        map.set_pte_index(0, Pte::page(a.pfn())).unwrap();
        map.set_pte_index(1, Pte::anon_page(b.pfn())).unwrap();
        map.set_pte_index(2, Pte::from_raw(POISON)).unwrap();
        map.set_pte_index(3, Pte::special(zero)).unwrap();
        map.set_pte_index(4, Pte::migration(5)).unwrap();
        map.set_pte_index(511, Pte::anon_page(a.pfn())).unwrap();
    }
    // Each present entry holds a reference of its own.
    assert_eq!((mmu.page_refs(a.pfn()), mmu.page_refs(b.pfn())), (3, 2));
    let r = page_table_check_pte_clear_range(&mmu, 0, &t.pmd());
    assert_eq!(
        r,
        PtcReport {
            present: 4,
            anon: 2,
            bad: 1
        }
    );
    // An empty table reports nothing.
    let e = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    assert_eq!(
        page_table_check_pte_clear_range(&mmu, 0, &e.pmd()),
        PtcReport::default()
    );
    e.pte_free();
    {
        // Clearing drops the entries' references after a grace period.
        let map = t.pte_offset_map_mut(0);
        for i in 0..512 {
            map.ptep_get_and_clear(i * PAGE_SIZE);
        }
    }
    t.pte_free();
    mmu.rcu_barrier();
    assert_eq!((mmu.page_refs(a.pfn()), mmu.page_refs(b.pfn())), (1, 1));
    drop((a, b));
    finish(&mmu);
}

#[test]
fn retract_of_anonymous_pages_counts_them_lost() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    map_pages(&mmu, region(1), 3);
    mmu.map_page(region(2)).unwrap();
    assert_eq!(mmu.retract_pte_table(region(2)), Ok(1));
    assert_eq!(mmu.stats().anon_pages_lost, 0, "a file page is not lost");
    // The simple remover does not care what it drops: the check counts the anon pages.
    assert_eq!(mmu.retract_pte_table(region(1)), Ok(3));
    assert_eq!(mmu.stats().anon_pages_lost, 3);
    finish(&mmu);
}

// =============================================================================================
// khugepaged: retract
// =============================================================================================

#[test]
fn retract_page_tables_retracts_a_file_vmas_table() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), 3);
    let t = table_of(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(mmu.retract_page_tables(region(1) + 0x1234), Ok(1));
    let s1 = mmu.stats();
    assert_eq!(s1.retracts, s0.retracts + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred + 1);
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now);
    assert_eq!(s1.anon_pages_lost, 0);
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    assert_eq!(mmu.translate(region(1)), Ok(None));
    mmu.rcu_barrier();
    assert!(is_free(&mmu, t));
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    // Nothing left to retract; a fault brings a new table.
    assert_eq!(unchanged(&mmu, |m| m.retract_page_tables(region(1))), Ok(0));
    mmu.map_page(region(1)).unwrap();
    assert_eq!(mmu.retract_page_tables(region(1)), Ok(1));
    finish(&mmu);
}

#[test]
fn retract_page_tables_skips_what_it_must() {
    let mmu = mmu(2048);
    // A file VMA with an anon_vma (a CoW happened): its anon pages must not be dropped.
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    map_pages(&mmu, region(1), 2);
    mmu.cow_fault(region(1)).unwrap();
    // An anonymous VMA.
    mmu.mmap(region(2), PMD_SIZE, VmaKind::Anon).unwrap();
    map_pages(&mmu, region(2), 2);
    // No VMA at all.
    map_pages(&mmu, region(3), 2);
    // A file VMA that covers only half of the 2 MiB range.
    mmu.mmap(region(4), PMD_SIZE / 2, VmaKind::File).unwrap();
    map_pages(&mmu, region(4), 2);
    // A file VMA with a huge page, one with no table.
    mmu.mmap(region(5), PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_huge(region(5)).unwrap();
    mmu.mmap(region(6), PMD_SIZE, VmaKind::File).unwrap();
    {
        let rmap = mmu.i_mmap_lock_read();
        assert!(rmap.vma_has_anon_vma(region(1)));
        assert!(!rmap.vma_has_anon_vma(region(4)));
        let files: Vec<u64> = rmap.file_vmas().iter().map(|v| v.start).collect();
        assert_eq!(files, vec![region(1), region(4), region(5), region(6)]);
    }
    for r in 1..=6 {
        assert_eq!(
            unchanged(&mmu, |m| m.retract_page_tables(region(r))),
            Ok(0),
            "region {r}"
        );
    }
    assert_eq!(mmu.stats().retracts, 0);
    assert_eq!(
        unchanged(&mmu, |m| m.retract_page_tables(GIB)),
        Err(Error::OutOfRange {
            addr: GIB,
            limit: GIB
        })
    );
    finish(&mmu);
}

#[test]
fn retract_pte_table_and_its_errors() {
    let mmu = mmu(2048);
    let pages = map_pages(&mmu, region(1), 5);
    let t = table_of(&mmu, region(1));
    assert_eq!(mmu.retract_pte_table(region(1) + 0x9000), Ok(5));
    assert_eq!(mmu.stats().retracts, 1);
    mmu.rcu_barrier();
    assert!(is_free(&mmu, t));
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    assert_eq!(
        unchanged(&mmu, |m| m.retract_pte_table(region(1))),
        Err(Error::NotMapped { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.retract_pte_table(region(100))),
        Err(Error::NotMapped { addr: region(100) })
    );
    mmu.map_huge(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.retract_pte_table(region(2))),
        Err(Error::HugeInTheWay { addr: region(2) })
    );
    // An empty table retracts with zero pages.
    mmu.map_page(region(3)).unwrap();
    mmu.unmap_page(region(3)).unwrap();
    assert_eq!(mmu.retract_pte_table(region(3)), Ok(0));
    finish(&mmu);
}

// =============================================================================================
// khugepaged: collapse_pte_mapped_thp
// =============================================================================================

/// Maps 512 file pages at `va` (a PTE-mapped THP, made by splitting a huge page).
fn pte_mapped_thp(mmu: &Mmu, va: u64) -> u64 {
    let head = mmu.map_huge(va).unwrap();
    assert_eq!(mmu.split_huge_pmd(va), Ok(SplitOutcome::Split));
    head
}

#[test]
fn collapse_pte_mapped_thp_collapses() {
    let mmu = mmu(4096);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), ENTRIES);
    let t = table_of(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(
        mmu.collapse_pte_mapped_thp(region(1) + 0x1000),
        Ok(CollapseOutcome::Collapsed)
    );
    let Some(PmdKind::Huge(huge)) = pmd_kind(&mmu, region(1)) else {
        panic!("not huge after collapse");
    };
    let dep = deposits_at(&mmu, region(1));
    assert_eq!(dep.len(), 1);
    assert_ne!(
        dep[0], t,
        "a new table is deposited; the old one is retired"
    );
    assert_eq!(
        mmu.translate(region(1) + 0x1_2345),
        Ok(Some((huge << 12) + 0x1_2345))
    );
    let s1 = mmu.stats();
    assert_eq!(s1.collapses, s0.collapses + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred + 1);
    assert_eq!(s1.anon_pages_lost, 0);
    mmu.rcu_barrier();
    assert!(is_free(&mmu, t));
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    // The collapsed page splits and collapses again.
    assert_eq!(mmu.split_huge_pmd(region(1)), Ok(SplitOutcome::Split));
    assert_eq!(
        mmu.collapse_pte_mapped_thp(region(1)),
        Ok(CollapseOutcome::Collapsed)
    );
    mmu.rcu_barrier();
    assert!((huge..huge + ENTRIES).all(|p| is_free(&mmu, p)));
    finish(&mmu);
}

#[test]
fn collapse_pte_mapped_thp_aborts() {
    let mmu = mmu(4096);
    // Upper levels missing, then a none pmd, then a huge one.
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(1))),
        Ok(CollapseOutcome::Aborted)
    );
    mmu.map_page(region(7)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(1))),
        Ok(CollapseOutcome::Aborted)
    );
    mmu.map_huge(region(2)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(2))),
        Ok(CollapseOutcome::Aborted)
    );
    // A table with no page at all.
    {
        let mm = mmu.mmap_read_lock();
        mm.pte_alloc(region(3)).unwrap();
    }
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(3))),
        Ok(CollapseOutcome::Aborted)
    );
    // Anonymous pages (a split THP in an anonymous VMA).
    mmu.mmap(region(4), PMD_SIZE, VmaKind::Anon).unwrap();
    pte_mapped_thp(&mmu, region(4));
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(4))),
        Ok(CollapseOutcome::Aborted)
    );
    // Zero-page PTEs are special.
    mmu.map_huge_zero(region(5)).unwrap();
    mmu.split_huge_pmd(region(5)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(5))),
        Ok(CollapseOutcome::Aborted)
    );
    // A migration PTE is not present.
    pte_mapped_thp(&mmu, region(6));
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(region(6)).unwrap().unwrap();
        let ptl = pte_offset_map_lock(&pmd, region(6)).unwrap();
        // The clear drops the page's reference (after a grace period).
        ptl.ptep_get_and_clear(region(6) + 9 * PAGE_SIZE);
        ptl.set_pte(region(6) + 9 * PAGE_SIZE, Pte::migration(1))
            .unwrap();
    }
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(region(6))),
        Ok(CollapseOutcome::Aborted)
    );
    assert_eq!(mmu.stats().collapses, 0);
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_pte_mapped_thp(GIB)),
        Err(Error::OutOfRange {
            addr: GIB,
            limit: GIB
        })
    );
    finish(&mmu);
}

#[test]
fn collapse_pte_mapped_thp_without_a_huge_page_removes_the_table() {
    // 1000 frames: the second 2 MiB run is cut short, the first holds frame 0: no huge page.
    let mmu = mmu(1000);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), ENTRIES);
    let t = table_of(&mmu, region(1));
    assert_eq!(
        mmu.collapse_pte_mapped_thp(region(1)),
        Ok(CollapseOutcome::TableRemoved)
    );
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    assert!(deposits_at(&mmu, region(1)).is_empty());
    assert_eq!(mmu.translate(region(1)), Ok(None));
    assert_eq!(mmu.stats().collapses, 0);
    mmu.rcu_barrier();
    assert!(is_free(&mmu, t));
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    // The range faults back in.
    mmu.map_page(region(1)).unwrap();
    finish(&mmu);
}

/// `collapse_pte_mapped_thp` step 2: `rw_nolock` maps the table, the table is retracted before
/// the lock is taken, and the `pmd_same` revalidation refuses to hand out a writable lock.
/// The same steps through the public API, with the retract on another thread between them.
#[test]
fn rw_nolock_revalidate_fails_when_the_table_was_retracted_between() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), 4);
    let t = table_of(&mmu, region(1));
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(region(1)).unwrap().unwrap();
        let nolock = pte_offset_map_rw_nolock(&pmd, region(1)).unwrap();
        let snapshot = nolock.pmdval();
        assert_eq!(snapshot.kind(), PmdKind::Table(t));
        // Between rw_nolock and the lock: another thread retracts the table.
        let n = std::thread::scope(|s| s.spawn(|| mmu.retract_pte_table(region(1))).join());
        assert_eq!(n.unwrap(), Ok(4));
        // The map still reads the detached table (RCU keeps it), but the lock is not proof.
        assert_eq!(nolock.ptep_get(region(1)).pfn(), Some(pages[0]));
        let err = nolock.lock().revalidate(&pmd).unwrap_err();
        assert_eq!(err.error, Error::PmdChanged);
        drop(err);
        // The ro_nolock lock of a fresh table: reads only, attachment not proven.
        assert_eq!(
            pte_offset_map_ro_nolock(&pmd, region(1)).err(),
            Some(NoMap::None)
        );
    }
    mmu.rcu_barrier();
    assert!(is_free(&mmu, t));
    // With the table gone the collapse aborts; with a new one it revalidates and collapses.
    assert_eq!(
        mmu.collapse_pte_mapped_thp(region(1)),
        Ok(CollapseOutcome::Aborted)
    );
    map_pages(&mmu, region(1), ENTRIES);
    assert_eq!(
        mmu.collapse_pte_mapped_thp(region(1)),
        Ok(CollapseOutcome::Collapsed)
    );
    finish(&mmu);
}

/// Polls `cond` for up to 5 s.
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Holds the PMD lock of the slot for `va` (under the mmap read lock) on its own thread until
/// the returned sender is used or dropped.
fn hold_pmd_lock<'s, 'm: 's>(
    s: &'s std::thread::Scope<'s, '_>,
    mmu: &'m Mmu,
    va: u64,
) -> mpsc::Sender<()> {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    s.spawn(move || {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(va).unwrap().unwrap();
        let pml = pmd_lock(&pmd);
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(pml);
    });
    locked_rx.recv().unwrap();
    release_tx
}

/// Holds the PTE lock of the table for `va` (under the mmap read lock) on its own thread.
fn hold_pte_lock<'s, 'm: 's>(
    s: &'s std::thread::Scope<'s, '_>,
    mmu: &'m Mmu,
    va: u64,
) -> mpsc::Sender<()> {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    s.spawn(move || {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(va).unwrap().unwrap();
        let ptl = pte_offset_map_lock(&pmd, va).unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(ptl);
    });
    locked_rx.recv().unwrap();
    release_tx
}

/// `collapse_pte_mapped_thp` and PT_RECLAIM meet at the PMD lock: the collapse takes it
/// before it clears anything, the reclaim (after zapping the PTEs under the PTE lock) fails
/// its trylock and waits for it. Made deterministic by holding the PMD lock while both run
/// into it. Whoever wins, the table is detached and freed exactly once and nothing is lost.
#[test]
fn collapse_pte_mapped_thp_and_pt_reclaim_serialise_on_the_pmd_lock() {
    let mmu = mmu(4096);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let pages = mmu.map_pages(region(1), ENTRIES as usize).unwrap();
        let t = table_of(&mmu, region(1));
        let (outcome, zap) = std::thread::scope(|s| {
            let release = hold_pmd_lock(s, &mmu, region(1));
            let collapse = s.spawn(|| mmu.collapse_pte_mapped_thp(region(1)).unwrap());
            let zap = s.spawn(|| mmu.madvise_dontneed(region(1), PMD_SIZE, true).unwrap());
            // The zap clears every PTE under the PTE lock, then waits for the PMD lock.
            wait_until("the zap", || mmu.translate(region(1)).unwrap().is_none());
            std::thread::sleep(Duration::from_millis(5));
            release.send(()).unwrap();
            (collapse.join().unwrap(), zap.join().unwrap())
        });
        mmu.rcu_barrier();
        assert!(is_free(&mmu, t), "the table is freed once");
        assert!(pages.iter().all(|&p| is_free(&mmu, p)));
        assert_eq!(mmu.audit().violations(), 0);
        assert!(mmu.check_tables().is_empty());
        // The zap emptied the table before the collapse could look: nothing to collapse, and
        // the table went to whichever of them detached it.
        assert_eq!(outcome, CollapseOutcome::Aborted);
        assert!(zap.tables_reclaimed <= 1);
        seen.insert(zap.tables_reclaimed);
        if pmd_kind(&mmu, region(1)) == Some(PmdKind::Table(t)) {
            panic!("a freed table is still installed");
        }
        let _ = mmu.madvise_dontneed(region(1), PMD_SIZE, true);
    }
    assert!(seen.contains(&1), "the reclaim never freed the table");
    finish(&mmu);
}

/// A fault that fills a hole while `collapse_pte_mapped_thp` runs must not be lost: the
/// collapse holds the PMD lock from before it clears the PTEs until it detaches the table,
/// and works only on file VMAs. Here the range maps file pages with one hole but lies in an
/// anonymous VMA (mapped before the VMA was created, which nothing forbids), so the fault in
/// the hole maps an anonymous page, and the collapse must leave the range alone.
#[test]
fn collapse_pte_mapped_thp_keeps_a_page_faulted_in_between_steps() {
    let mmu = mmu(4096);
    let hole = region(1) + 7 * PAGE_SIZE;
    mmu.map_pages(region(1), 7).unwrap();
    mmu.map_pages(hole + PAGE_SIZE, ENTRIES as usize - 8)
        .unwrap();
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let (outcome, faulted) = std::thread::scope(|s| {
        let release = hold_pmd_lock(s, &mmu, region(1));
        let collapse = s.spawn(|| mmu.collapse_pte_mapped_thp(region(1)).unwrap());
        std::thread::sleep(Duration::from_millis(10));
        let faulted = mmu.map_page(hole).unwrap();
        release.send(()).unwrap();
        (collapse.join().unwrap(), faulted)
    });
    mmu.rcu_barrier();
    assert_eq!(outcome, CollapseOutcome::Aborted);
    assert_eq!(mmu.stats().anon_pages_lost, 0, "outcome {outcome:?}");
    assert_eq!(mmu.frame_kind(faulted), Some(FrameKind::Data));
    assert_eq!(mmu.translate(hole), Ok(Some(faulted << 12)));
    finish(&mmu);
}

/// `retract_page_tables` holds only the rmap lock: a CoW fault can prepare the VMA's anon_vma
/// and install an anonymous page after the retract's first look. Made deterministic by holding
/// the PTE lock while the retract (past its first check, holding the PMD lock) and the CoW
/// fault (anon_vma prepared) both wait for it. Whichever wins, the retract must see the
/// anon_vma under the locks (bug B4) and leave the table.
#[test]
fn retract_page_tables_rechecks_anon_vma_under_the_locks() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), 4);
    let t = table_of(&mmu, region(1));
    let (retracted, copy) = std::thread::scope(|s| {
        let release = hold_pte_lock(s, &mmu, region(1));
        let retract = s.spawn(|| mmu.retract_page_tables(region(1)).unwrap());
        std::thread::sleep(Duration::from_millis(10));
        let cow = s.spawn(|| mmu.cow_fault(region(1) + PAGE_SIZE).unwrap());
        wait_until("the CoW fault to prepare anon_vma", || {
            mmu.find_vma(region(1)).unwrap().anon_vma
        });
        std::thread::sleep(Duration::from_millis(10));
        release.send(()).unwrap();
        (retract.join().unwrap(), cow.join().unwrap())
    });
    assert_eq!(retracted, 0);
    assert_eq!(table_of(&mmu, region(1)), t);
    assert_eq!(ptes(&mmu, region(1))[1], Pte::anon_page(copy));
    assert_eq!(mmu.stats().anon_pages_lost, 0);
    mmu.rcu_barrier();
    assert!(is_free(&mmu, pages[1]));
    finish(&mmu);
}

// =============================================================================================
// khugepaged: collapse_huge_page (anonymous)
// =============================================================================================

#[test]
fn collapse_huge_page_collapses_and_reuses_the_table_as_deposit() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let pages = map_pages(&mmu, region(1), 20);
    let t = table_of(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(
        mmu.collapse_huge_page(region(1) + 0x4000),
        Ok(CollapseOutcome::Collapsed)
    );
    let Some(PmdKind::Huge(huge)) = pmd_kind(&mmu, region(1)) else {
        panic!("not huge after collapse");
    };
    // The detached table is reused, not freed: it is the deposit now, and it is empty.
    assert_eq!(deposits_at(&mmu, region(1)), vec![t]);
    assert_eq!(mmu.frame_kind(t), Some(FrameKind::Pte));
    let s1 = mmu.stats();
    assert_eq!(s1.collapses, s0.collapses + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred);
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now);
    assert_eq!(s1.anon_pages_lost, 0);
    assert_eq!(
        mmu.translate(region(1) + 0x42),
        Ok(Some((huge << 12) + 0x42))
    );
    mmu.rcu_barrier();
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    // The deposit comes back, empty-then-filled, on a split.
    assert_eq!(mmu.split_huge_pmd(region(1)), Ok(SplitOutcome::Split));
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::Table(t)));
    assert!(ptes(&mmu, region(1)).iter().all(|p| p.is_anon()));
    finish(&mmu);
}

#[test]
fn collapse_huge_page_out_of_frames_restores_the_table() {
    // 1000 frames: never a free 2 MiB run.
    let mmu = mmu(1000);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    let pages = map_pages(&mmu, region(1), 20);
    let t = table_of(&mmu, region(1));
    let before: Vec<_> = (0..20)
        .map(|i| mmu.translate(region(1) + i * PAGE_SIZE + 8).unwrap())
        .collect();
    let err = unchanged(&mmu, |m| m.collapse_huge_page(region(1))).unwrap_err();
    assert!(
        matches!(err, Error::OutOfFrames { needed: 512, .. }),
        "{err:?}"
    );
    assert_eq!(
        table_of(&mmu, region(1)),
        t,
        "the same table, back in place"
    );
    let after: Vec<_> = (0..20)
        .map(|i| mmu.translate(region(1) + i * PAGE_SIZE + 8).unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(pages.iter().all(|&p| mmu.page_refs(p) == 1));
    assert_eq!(mmu.stats().collapses, 0);
    assert_eq!(mmu.stats().anon_pages_lost, 0);
    finish(&mmu);
}

#[test]
fn collapse_huge_page_errors() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    map_pages(&mmu, region(1), 2);
    map_pages(&mmu, region(2), 2);
    mmu.mmap(region(3), PMD_SIZE / 2, VmaKind::Anon).unwrap();
    map_pages(&mmu, region(3), 2);
    for r in [1, 2, 3] {
        assert_eq!(
            unchanged(&mmu, |m| m.collapse_huge_page(region(r) + PAGE_SIZE)),
            Err(Error::NotInVma {
                addr: region(r) + PAGE_SIZE
            }),
            "region {r}"
        );
    }
    // An anonymous VMA without a table: pmd none, or no upper levels.
    mmu.mmap(region(4), PMD_SIZE, VmaKind::Anon).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_huge_page(region(4))),
        Err(Error::NotMapped { addr: region(4) })
    );
    // Already huge.
    mmu.map_huge(region(4)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.collapse_huge_page(region(4))),
        Ok(CollapseOutcome::Aborted)
    );
    let big = Mmu::new(MmuConfig {
        frames: 64,
        va_limit: 2 * GIB,
    })
    .unwrap();
    big.mmap(GIB, PMD_SIZE, VmaKind::Anon).unwrap();
    assert_eq!(
        unchanged(&big, |m| m.collapse_huge_page(GIB)),
        Err(Error::NotMapped { addr: GIB })
    );
    finish(&mmu);
    finish(&big);
}

// =============================================================================================
// GUP-fast
// =============================================================================================

#[test]
fn gup_fast_pins_and_unpins() {
    let mmu = mmu(1024);
    let pages = map_pages(&mmu, region(1), 3);
    let pins = mmu.gup_fast(region(1), 3).unwrap();
    assert_eq!(pins.iter().map(|p| p.pfn()).collect::<Vec<_>>(), pages);
    assert!(pages.iter().all(|&p| mmu.page_refs(p) == 2));
    let more = mmu.gup_fast(region(1) + PAGE_SIZE, 1).unwrap();
    assert_eq!(mmu.page_refs(pages[1]), 3);
    drop(more);
    drop(pins);
    assert!(pages.iter().all(|&p| mmu.page_refs(p) == 1));
    assert_eq!(
        mmu.gup_fast(region(1) + 8, 1).err(),
        Some(Error::Misaligned {
            addr: region(1) + 8,
            align: PAGE_SIZE
        })
    );
    finish(&mmu);
}

#[test]
fn gup_fast_stops_at_the_first_unmapped_page() {
    let mmu = mmu(1024);
    let pages = map_pages(&mmu, region(1), 3);
    mmu.map_page(region(1) + 4 * PAGE_SIZE).unwrap();
    let pins = mmu.gup_fast(region(1), 10).unwrap();
    assert_eq!(pins.len(), 3);
    drop(pins);
    assert_eq!(mmu.gup_fast(region(1) + 3 * PAGE_SIZE, 2).unwrap().len(), 0);
    assert_eq!(mmu.gup_fast(region(5), 2).unwrap().len(), 0);
    // Across the end of a table into the next one.
    let last = mmu.map_page(region(2) - PAGE_SIZE).unwrap();
    let first = mmu.map_page(region(2)).unwrap();
    let pins = mmu.gup_fast(region(2) - PAGE_SIZE, 3).unwrap();
    assert_eq!(
        pins.iter().map(|p| p.pfn()).collect::<Vec<_>>(),
        vec![last, first]
    );
    // At the end of the address space.
    mmu.map_page(GIB - PAGE_SIZE).unwrap();
    assert_eq!(mmu.gup_fast(GIB - PAGE_SIZE, 4).unwrap().len(), 1);
    drop(pins);
    assert!(pages.iter().all(|&p| mmu.page_refs(p) == 1));
    finish(&mmu);
}

#[test]
fn gup_fast_pins_huge_pages_through_the_head() {
    let mmu = mmu(2048);
    let head = mmu.map_huge(region(1)).unwrap();
    let pins = mmu.gup_fast(region(1) + 5 * PAGE_SIZE, 3).unwrap();
    assert_eq!(
        pins.iter().map(|p| p.pfn()).collect::<Vec<_>>(),
        vec![head + 5, head + 6, head + 7]
    );
    assert_eq!(mmu.page_refs(head), 4);
    drop(pins);
    assert_eq!(mmu.page_refs(head), 1);
    // A pin keeps the huge page alive after it is unmapped.
    let pin = mmu.gup_fast(region(1) + PMD_SIZE - PAGE_SIZE, 1).unwrap();
    assert_eq!(pin[0].pfn(), head + 511);
    mmu.unmap_huge(region(1)).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(head), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(head), 1);
    drop(pin);
    assert!((head..head + ENTRIES).all(|p| is_free(&mmu, p)));
    finish(&mmu);
}

#[test]
fn gup_fast_refuses_the_zero_page() {
    let mmu = mmu(2048);
    mmu.map_huge_zero(region(1)).unwrap();
    assert_eq!(mmu.gup_fast(region(1), 1).unwrap().len(), 0);
    mmu.split_huge_pmd(region(1)).unwrap();
    assert_eq!(mmu.gup_fast(region(1), 1).unwrap().len(), 0);
    // A real page before it is pinned; the walk stops at the special PTE.
    mmu.map_page(region(1) - PAGE_SIZE).unwrap();
    assert_eq!(mmu.gup_fast(region(1) - PAGE_SIZE, 2).unwrap().len(), 1);
    finish(&mmu);
}

#[test]
fn gup_pin_outlives_an_unmap() {
    let mmu = mmu(1024);
    let pfn = mmu.map_page(region(1)).unwrap();
    let pin = mmu.gup_fast(region(1), 1).unwrap();
    mmu.unmap_page(region(1)).unwrap();
    mmu.retract_pte_table(region(1)).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(pfn), 1);
    drop(pin);
    assert!(is_free(&mmu, pfn));
    finish(&mmu);
}

#[test]
fn pin_of_a_thp_subpage_survives_split_and_zap() {
    let mmu = mmu(2048);
    let head = mmu.map_huge(region(1)).unwrap();
    let pins = mmu.gup_fast(region(1) + 5 * PAGE_SIZE, 1).unwrap();
    assert_eq!(pins[0].pfn(), head + 5);
    assert_eq!(mmu.split_huge_pmd(region(1)), Ok(SplitOutcome::Split));
    mmu.unmap_page(region(1) + 5 * PAGE_SIZE).unwrap();
    mmu.rcu_barrier();
    assert_ne!(
        mmu.frame_kind(head + 5),
        Some(FrameKind::Free),
        "a pinned page was freed"
    );
    drop(pins);
    finish(&mmu);
}

// =============================================================================================
// MADV_DONTNEED and PT_RECLAIM
// =============================================================================================

#[test]
fn madvise_dontneed_without_reclaim_keeps_the_table() {
    let mmu = mmu(1024);
    let pages = map_pages(&mmu, region(1), 3);
    let t = table_of(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(
        mmu.madvise_dontneed(region(1), PMD_SIZE, false),
        Ok(ZapStats {
            pages: 3,
            huge: 0,
            tables_reclaimed: 0
        })
    );
    assert_eq!(table_of(&mmu, region(1)), t);
    assert!(ptes(&mmu, region(1)).iter().all(|p| p.is_none()));
    assert_eq!(mmu.stats().reclaims, s0.reclaims);
    mmu.rcu_barrier();
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    finish(&mmu);
}

#[test]
fn madvise_dontneed_with_reclaim_frees_the_empty_table() {
    let mmu = mmu(1024);
    // Once under the VMA lock (one VMA covers the range), once under the mmap lock.
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    for r in [1, 2] {
        let pages = map_pages(&mmu, region(r), 3);
        let t = table_of(&mmu, region(r));
        let s0 = mmu.stats();
        assert_eq!(
            mmu.madvise_dontneed(region(r), PMD_SIZE, true),
            Ok(ZapStats {
                pages: 3,
                huge: 0,
                tables_reclaimed: 1
            })
        );
        let s1 = mmu.stats();
        assert_eq!(s1.reclaims, s0.reclaims + 1);
        assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred + 1);
        assert_eq!(s1.anon_pages_lost, 0);
        assert_eq!(pmd_kind(&mmu, region(r)), Some(PmdKind::None));
        mmu.rcu_barrier();
        assert!(is_free(&mmu, t));
        assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    }
    // An empty table with no pages is reclaimed too.
    {
        let mm = mmu.mmap_read_lock();
        mm.pte_alloc(region(3)).unwrap();
    }
    assert_eq!(
        mmu.madvise_dontneed(region(3), PMD_SIZE, true),
        Ok(ZapStats {
            pages: 0,
            huge: 0,
            tables_reclaimed: 1
        })
    );
    finish(&mmu);
}

#[test]
fn madvise_dontneed_reclaims_only_whole_tables() {
    let mmu = mmu(1024);
    let pages = map_pages(&mmu, region(1), 2);
    // The range covers both pages but not the whole 2 MiB: the table stays, empty.
    assert_eq!(
        mmu.madvise_dontneed(region(1), 4 * PAGE_SIZE, true),
        Ok(ZapStats {
            pages: 2,
            huge: 0,
            tables_reclaimed: 0
        })
    );
    assert!(matches!(pmd_kind(&mmu, region(1)), Some(PmdKind::Table(_))));
    // Across two regions: region 1 whole, region 2 partly.
    map_pages(&mmu, region(2), 2);
    let stats = mmu
        .madvise_dontneed(region(1), PMD_SIZE + PAGE_SIZE, true)
        .unwrap();
    assert_eq!(stats.pages, 1);
    assert_eq!(stats.tables_reclaimed, 1);
    assert!(matches!(pmd_kind(&mmu, region(2)), Some(PmdKind::Table(_))));
    mmu.rcu_barrier();
    assert!(pages.iter().all(|&p| is_free(&mmu, p)));
    finish(&mmu);
}

#[test]
fn madvise_dontneed_on_huge_pages() {
    let mmu = mmu(4096);
    let h1 = mmu.map_huge(region(1)).unwrap();
    let s0 = mmu.stats();
    // The whole huge page: zap_huge_pmd, deposit freed at once.
    assert_eq!(
        mmu.madvise_dontneed(region(1), PMD_SIZE, true),
        Ok(ZapStats {
            pages: 0,
            huge: 1,
            tables_reclaimed: 0
        })
    );
    assert_eq!(mmu.stats().tables_freed_now, s0.tables_freed_now + 1);
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    // Part of one: split, then zap the PTEs in range.
    let h2 = mmu.map_huge(region(2)).unwrap();
    let stats = mmu
        .madvise_dontneed(region(2) + PAGE_SIZE, 2 * PAGE_SIZE, true)
        .unwrap();
    assert_eq!(
        stats,
        ZapStats {
            pages: 2,
            huge: 0,
            tables_reclaimed: 0
        }
    );
    assert_eq!(mmu.stats().splits, s0.splits + 1);
    assert_eq!(mmu.translate(region(2)), Ok(Some(h2 << 12)));
    assert_eq!(mmu.translate(region(2) + PAGE_SIZE), Ok(None));
    assert_eq!(
        mmu.translate(region(2) + 3 * PAGE_SIZE),
        Ok(Some((h2 + 3) << 12))
    );
    mmu.rcu_barrier();
    assert!((h1..h1 + ENTRIES).all(|p| is_free(&mmu, p)));
    // The folio stays whole: two of its 512 PTE references were dropped.
    assert_eq!(mmu.frame_kind(h2 + 1), Some(FrameKind::Data));
    assert_eq!(mmu.page_refs(h2 + 3), ENTRIES as u32 - 2);
    finish(&mmu);
}

#[test]
fn madvise_dontneed_errors() {
    let mmu = mmu(1024);
    map_pages(&mmu, region(1), 2);
    assert_eq!(
        unchanged(&mmu, |m| m.madvise_dontneed(region(1), 0, true)),
        Err(Error::EmptyRange { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.madvise_dontneed(region(1) + 1, PAGE_SIZE, true)),
        Err(Error::Misaligned {
            addr: region(1) + 1,
            align: PAGE_SIZE
        })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.madvise_dontneed(region(1), GIB, true)),
        Err(Error::OutOfRange {
            addr: region(1) + GIB - 1,
            limit: GIB
        })
    );
    // Nothing mapped: nothing done.
    assert_eq!(
        unchanged(&mmu, |m| m.madvise_dontneed(region(7), PMD_SIZE, true)),
        Ok(ZapStats::default())
    );
    finish(&mmu);
}

/// `zap_pmd_range` reads a huge pmd, then `zap_huge_pmd` takes the PMD lock. If the pmd was
/// split in between, the kernel falls through to `zap_pte_range` and zaps the PTEs. Made
/// deterministic: one thread holds the PMD lock while `madvise_dontneed` (which has read the
/// huge pmd) and `split_huge_pmd` both wait for it; whichever gets it first, no page that was
/// mapped before `MADV_DONTNEED` may stay mapped after it returns.
#[test]
fn madvise_dontneed_zaps_a_thp_split_under_it() {
    let mmu = mmu(4096);
    let va = region(1);
    let mut split_first = 0;
    for _ in 0..20 {
        let head = mmu.map_huge(va).unwrap();
        let (zap, split) = std::thread::scope(|s| {
            let release = hold_pmd_lock(s, &mmu, va);
            let zap = s.spawn(|| mmu.madvise_dontneed(va, PMD_SIZE, false).unwrap());
            std::thread::sleep(Duration::from_millis(10));
            let split = s.spawn(|| mmu.split_huge_pmd(va).unwrap());
            std::thread::sleep(Duration::from_millis(10));
            release.send(()).unwrap();
            (zap.join().unwrap(), split.join().unwrap())
        });
        let mapped = (0..ENTRIES)
            .filter(|i| mmu.translate(va + i * PAGE_SIZE).unwrap().is_some())
            .count();
        assert_eq!(
            mapped, 0,
            "MADV_DONTNEED left {mapped} pages mapped (zap {zap:?}, split {split:?})"
        );
        if split == SplitOutcome::Split {
            split_first += 1;
            // Clean up the (now empty) table for the next round.
            mmu.madvise_dontneed(va, PMD_SIZE, true).unwrap();
        }
        mmu.rcu_barrier();
        assert!(
            (head..head + ENTRIES).all(|p| is_free(&mmu, p)),
            "the huge page is freed"
        );
        if split_first >= 3 {
            break;
        }
    }
    finish(&mmu);
}

// =============================================================================================
// munmap
// =============================================================================================

#[test]
fn munmap_zaps_frees_tables_and_removes_vmas() {
    let mmu = mmu(4096);
    mmu.mmap(region(1), 2 * PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(3), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1), 4);
    let t1 = table_of(&mmu, region(1));
    let head = mmu.map_huge(region(2)).unwrap();
    let deposit = deposits_at(&mmu, region(2))[0];
    let file_pages = map_pages(&mmu, region(3) + PAGE_SIZE, 2);
    let t3 = table_of(&mmu, region(3));
    let s0 = mmu.stats();
    // Two VMAs, three regions: the huge page is zapped, two PTE tables are freed.
    assert_eq!(mmu.munmap(region(1), 3 * PMD_SIZE), Ok(2));
    let s1 = mmu.stats();
    assert_eq!(s1.pgtables_freed, s0.pgtables_freed + 2);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred + 2);
    assert_eq!(s1.tables_freed_now, s0.tables_freed_now + 1, "the deposit");
    assert_eq!(s1.anon_pages_lost, 0, "everything was zapped first");
    assert_eq!(mmu.find_vma(region(1)), None);
    assert_eq!(mmu.find_vma(region(3)), None);
    assert!(mmu.lock_vma_under_rcu(region(1)).is_none());
    assert!(mmu.i_mmap_lock_read().file_vmas().is_empty());
    for r in 1..=3 {
        assert_eq!(pmd_kind(&mmu, region(r)), Some(PmdKind::None));
    }
    mmu.rcu_barrier();
    for pfn in pages.iter().chain(&file_pages).chain(&[t1, t3, deposit]) {
        assert!(is_free(&mmu, *pfn), "{pfn:#x}");
    }
    assert!((head..head + ENTRIES).all(|p| is_free(&mmu, p)));
    // The range can be mapped again.
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_page(region(1)).unwrap();
    finish(&mmu);
}

#[test]
fn munmap_partial_vma_changes_nothing() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), 2 * PMD_SIZE, VmaKind::Anon).unwrap();
    map_pages(&mmu, region(1), 2);
    map_pages(&mmu, region(2), 2);
    let vma = mmu.find_vma(region(1)).unwrap();
    assert_eq!(
        unchanged(&mmu, |m| m.munmap(region(1), PMD_SIZE)),
        Err(Error::PartialVma { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.munmap(region(2), 2 * PMD_SIZE)),
        Err(Error::PartialVma { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.munmap(0, 2 * PMD_SIZE)),
        Err(Error::PartialVma { addr: region(1) })
    );
    assert_eq!(
        unchanged(&mmu, |m| m.munmap(region(1), 0)),
        Err(Error::EmptyRange { addr: region(1) })
    );
    assert_eq!(mmu.find_vma(region(1)), Some(vma));
    assert!(mmu.lock_vma_under_rcu(region(2)).is_some());
    finish(&mmu);
}

#[test]
fn munmap_of_part_of_a_table_keeps_the_table() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), 4 * PAGE_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(1) + 4 * PAGE_SIZE, 4 * PAGE_SIZE, VmaKind::Anon)
        .unwrap();
    let pages = map_pages(&mmu, region(1), 8);
    let t = table_of(&mmu, region(1));
    assert_eq!(mmu.munmap(region(1), 4 * PAGE_SIZE), Ok(0));
    assert_eq!(table_of(&mmu, region(1)), t);
    assert_eq!(mmu.translate(region(1)), Ok(None));
    assert_eq!(
        mmu.translate(region(1) + 4 * PAGE_SIZE),
        Ok(Some(pages[4] << 12))
    );
    assert!(mmu.find_vma(region(1) + 4 * PAGE_SIZE).is_some());
    // Without any VMA, munmap still zaps and frees what is mapped in the range.
    map_pages(&mmu, region(5), 2);
    assert_eq!(mmu.munmap(region(5), PMD_SIZE), Ok(1));
    assert_eq!(pmd_kind(&mmu, region(5)), Some(PmdKind::None));
    finish(&mmu);
}

// =============================================================================================
// move_normal_pmd
// =============================================================================================

#[test]
fn move_normal_pmd_moves_the_table() {
    let mmu = mmu(1024);
    // Tables move between VMAs of one kind.
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    mmu.mmap(region(7), PMD_SIZE, VmaKind::File).unwrap();
    let pages = map_pages(&mmu, region(1) + 0x10_0000, 3);
    let t = table_of(&mmu, region(1));
    let s0 = mmu.stats();
    assert_eq!(mmu.move_normal_pmd(region(1), region(7)), Ok(()));
    assert_eq!(pmd_kind(&mmu, region(1)), Some(PmdKind::None));
    assert_eq!(
        table_of(&mmu, region(7)),
        t,
        "the same table, in the new slot"
    );
    for (i, &pfn) in pages.iter().enumerate() {
        let off = 0x10_0000 + i as u64 * PAGE_SIZE + 0x10;
        assert_eq!(mmu.translate(region(7) + off), Ok(Some((pfn << 12) | 0x10)));
        assert_eq!(mmu.translate(region(1) + off), Ok(None));
    }
    let s1 = mmu.stats();
    assert_eq!(s1.pmd_moves, s0.pmd_moves + 1);
    assert_eq!(s1.tables_installed, s0.tables_installed + 1);
    assert_eq!(s1.tables_freed_deferred, s0.tables_freed_deferred);
    assert!(pages.iter().all(|&p| mmu.page_refs(p) == 1));
    // And back.
    mmu.move_normal_pmd(region(7), region(1)).unwrap();
    assert_eq!(table_of(&mmu, region(1)), t);
    finish(&mmu);
}

#[test]
fn move_normal_pmd_into_another_pmd_table() {
    let mmu = Mmu::new(MmuConfig {
        frames: 1024,
        va_limit: 4 * GIB,
    })
    .unwrap();
    mmu.mmap(region(1), PMD_SIZE, VmaKind::File).unwrap();
    mmu.mmap(3 * GIB + region(2), PMD_SIZE, VmaKind::File)
        .unwrap();
    let pfn = mmu.map_page(region(1)).unwrap();
    let t = table_of(&mmu, region(1));
    let free = mmu.free_frames();
    mmu.move_normal_pmd(region(1), 3 * GIB + region(2)).unwrap();
    // A PMD table was allocated for the new slot.
    assert_eq!(mmu.free_frames(), free - 1);
    assert_eq!(table_of(&mmu, 3 * GIB + region(2)), t);
    assert_eq!(mmu.translate(3 * GIB + region(2)), Ok(Some(pfn << 12)));
    assert_eq!(mmu.translate(region(1)), Ok(None));
    finish(&mmu);
}

#[test]
fn move_normal_pmd_errors() {
    let mmu = mmu(2048);
    mmu.mmap(region(1), 5 * PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(6), PMD_SIZE, VmaKind::File).unwrap();
    mmu.mmap(region(7), PMD_SIZE / 2, VmaKind::Anon).unwrap();
    map_pages(&mmu, region(1), 2);
    map_pages(&mmu, region(2), 2);
    mmu.map_huge(region(3)).unwrap();
    let cases = [
        // Both ends must be wholly inside VMAs of one kind.
        (region(1), region(6), Error::NotInVma { addr: region(6) }),
        (region(1), region(7), Error::NotInVma { addr: region(7) }),
        (region(1), region(8), Error::NotInVma { addr: region(8) }),
        (region(8), region(5), Error::NotInVma { addr: region(8) }),
        (region(4), region(5), Error::NotMapped { addr: region(4) }),
        (region(3), region(5), Error::NotMapped { addr: region(3) }),
        (
            region(1),
            region(2),
            Error::AlreadyMapped { addr: region(2) },
        ),
        (
            region(1),
            region(3),
            Error::AlreadyMapped { addr: region(3) },
        ),
        (
            region(1),
            region(1),
            Error::AlreadyMapped { addr: region(1) },
        ),
        (
            region(1) + PAGE_SIZE,
            region(5),
            Error::Misaligned {
                addr: region(1) + PAGE_SIZE,
                align: PMD_SIZE,
            },
        ),
        (
            region(1),
            region(5) + PAGE_SIZE,
            Error::Misaligned {
                addr: region(5) + PAGE_SIZE,
                align: PMD_SIZE,
            },
        ),
        (
            region(1),
            GIB,
            Error::OutOfRange {
                addr: GIB,
                limit: GIB,
            },
        ),
    ];
    for (old, new, err) in cases {
        assert_eq!(
            unchanged(&mmu, |m| m.move_normal_pmd(old, new)),
            Err(err),
            "{old:#x} -> {new:#x}"
        );
    }
    // No upper levels at the old address.
    let big = Mmu::new(MmuConfig {
        frames: 64,
        va_limit: 2 * GIB,
    })
    .unwrap();
    big.mmap(GIB, PMD_SIZE, VmaKind::Anon).unwrap();
    big.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    big.map_page(0).unwrap();
    assert_eq!(
        unchanged(&big, |m| m.move_normal_pmd(GIB, region(1))),
        Err(Error::NotMapped { addr: GIB })
    );
    assert_eq!(mmu.stats().pmd_moves, 0);
    finish(&mmu);
    finish(&big);
}

// =============================================================================================
// The VMA model
// =============================================================================================

#[test]
fn mmap_and_find_vma() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), 3 * PAGE_SIZE, VmaKind::Anon).unwrap();
    let v = mmu.find_vma(region(1) + 2 * PAGE_SIZE).unwrap();
    assert_eq!(
        (v.start, v.end, v.kind, v.anon_vma),
        (region(1), region(1) + 3 * PAGE_SIZE, VmaKind::Anon, false)
    );
    assert_eq!(mmu.find_vma(region(1) + 3 * PAGE_SIZE), None);
    assert_eq!(
        mmu.mmap(region(1) - PAGE_SIZE, 2 * PAGE_SIZE, VmaKind::File),
        Err(Error::AlreadyMapped { addr: region(1) })
    );
    assert_eq!(
        mmu.mmap(region(1) + PAGE_SIZE, PAGE_SIZE, VmaKind::File),
        Err(Error::AlreadyMapped {
            addr: region(1) + PAGE_SIZE
        })
    );
    assert_eq!(
        mmu.mmap(region(1) + 1, PAGE_SIZE, VmaKind::File),
        Err(Error::Misaligned {
            addr: region(1) + 1,
            align: PAGE_SIZE
        })
    );
    assert_eq!(
        mmu.mmap(region(2), 5, VmaKind::File),
        Err(Error::Misaligned {
            addr: 5,
            align: PAGE_SIZE
        })
    );
    assert_eq!(
        mmu.mmap(GIB - PAGE_SIZE, 2 * PAGE_SIZE, VmaKind::File),
        Err(Error::OutOfRange {
            addr: GIB + PAGE_SIZE - 1,
            limit: GIB
        })
    );
    // Adjacent is fine.
    mmu.mmap(region(1) + 3 * PAGE_SIZE, PAGE_SIZE, VmaKind::File)
        .unwrap();
    finish(&mmu);
}

#[test]
fn vma_locks_and_their_walks() {
    let mmu = mmu(1024);
    mmu.mmap(region(1), PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(2), PMD_SIZE, VmaKind::File).unwrap();
    map_pages(&mmu, region(1), 1);
    map_pages(&mmu, region(2), 1);
    assert!(mmu.lock_vma_under_rcu(region(3)).is_none(), "no VMA");
    {
        let vg = mmu.lock_vma_under_rcu(region(1) + 5).unwrap();
        assert_eq!(vg.vma().start, region(1));
        let pmd = vg.pmd_offset(region(1)).unwrap().unwrap();
        assert!(
            pte_offset_map_lock(&pmd, region(1))
                .unwrap()
                .pte()
                .is_present()
        );
        assert_eq!(
            vg.pmd_offset(region(2)).err(),
            Some(Error::OutsideVma { addr: region(2) })
        );
        // Readers share.
        let other = mmu.lock_vma_under_rcu(region(1)).unwrap();
        drop(other);
    }
    {
        let mw = mmu.mmap_write_lock();
        let vw = mw.vma_start_write(region(1)).unwrap();
        assert_eq!(vw.vma().kind, VmaKind::Anon);
        assert!(
            mmu.lock_vma_under_rcu(region(1)).is_none(),
            "write-locked: readers fall back to the mmap lock"
        );
        assert!(mmu.lock_vma_under_rcu(region(2)).is_some(), "other VMA");
        assert!(vw.pmd_offset(region(1)).unwrap().is_some());
        assert_eq!(
            vw.pmd_offset(region(2)).err(),
            Some(Error::OutsideVma { addr: region(2) })
        );
        assert!(mw.vma_start_write(region(3)).is_none());
    }
    assert!(mmu.lock_vma_under_rcu(region(1)).is_some());
    {
        let rmap = mmu.i_mmap_lock_read();
        assert!(rmap.pmd_offset(region(2)).unwrap().is_some());
        assert_eq!(
            rmap.pmd_offset(region(1)).err(),
            Some(Error::OutsideVma { addr: region(1) })
        );
        assert_eq!(
            rmap.pmd_offset(region(3)).err(),
            Some(Error::OutsideVma { addr: region(3) })
        );
        assert_eq!(rmap.file_vmas().len(), 1);
    }
    finish(&mmu);
}

// =============================================================================================
// Counters, checks and frame accounting
// =============================================================================================

#[test]
fn frames_return_after_everything_is_torn_down() {
    let mmu = mmu(4096);
    let initial = mmu.free_frames();
    assert_eq!(initial, 4096 - 2, "frame 0 and the PGD");
    mmu.mmap(region(1), 4 * PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(region(5), 2 * PMD_SIZE, VmaKind::File).unwrap();
    // Faults, CoW, THP, zero THP, splits, collapses, retracts, reclaim, moves, pins.
    map_pages(&mmu, region(1), 40);
    map_pages(&mmu, region(5), 10);
    mmu.cow_fault(region(5) + PAGE_SIZE).unwrap();
    mmu.map_huge(region(2)).unwrap();
    mmu.map_huge_zero(region(3)).unwrap();
    mmu.split_huge_pmd(region(3)).unwrap();
    mmu.collapse_huge_page(region(1)).unwrap();
    mmu.split_huge_pmd(region(1) + PAGE_SIZE).unwrap();
    let pins = mmu.gup_fast(region(1), 8).unwrap();
    mmu.madvise_dontneed(region(2) + PAGE_SIZE, PAGE_SIZE, true)
        .unwrap();
    mmu.map_page(region(4)).unwrap();
    mmu.mmap(region(20), PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.move_normal_pmd(region(4), region(20)).unwrap();
    map_pages(&mmu, region(6), ENTRIES);
    mmu.collapse_pte_mapped_thp(region(6)).unwrap();
    map_pages(&mmu, region(8), 3);
    mmu.retract_pte_table(region(8)).unwrap();
    map_pages(&mmu, region(9), 3);
    mmu.madvise_dontneed(region(9), PMD_SIZE, true).unwrap();
    drop(pins);
    let s = mmu.stats();
    assert_eq!(
        (s.collapses, s.splits, s.pmd_moves, s.reclaims),
        (2, 3, 1, 1)
    );
    assert_eq!(mmu.check_tables(), Vec::<String>::new());

    // Tear down everything.
    assert!(mmu.munmap(0, GIB).unwrap() >= 5);
    mmu.rcu_barrier();
    let d = mmu.dump();
    let upper = upper_tables(&d);
    assert_eq!(upper, 2, "one PUD, one PMD table");
    assert!(d.deposits.is_empty());
    assert!(d.entries.iter().all(|&(level, _, _)| level >= 3));
    assert_eq!(mmu.find_vma(region(1)), None);
    // Kept for the MMU's life: the zero page and the huge zero page.
    let kept = 1 + ENTRIES as usize;
    assert_eq!(mmu.free_frames(), initial - upper - kept);
    let s = mmu.stats();
    assert_eq!(s.anon_pages_lost, 0);
    assert_eq!(s.free_frames, mmu.free_frames());
    finish(&mmu);
}

#[test]
fn counters_add_up() {
    let mmu = mmu(2048);
    map_pages(&mmu, region(1), 2);
    map_pages(&mmu, region(2), 2);
    mmu.map_huge(region(3)).unwrap();
    mmu.split_huge_pmd(region(3)).unwrap();
    mmu.retract_pte_table(region(1)).unwrap();
    mmu.madvise_dontneed(region(2), PMD_SIZE, true).unwrap();
    mmu.munmap(region(3), PMD_SIZE).unwrap();
    mmu.rcu_barrier();
    let s = mmu.stats();
    assert_eq!(s.tables_installed, 3, "two faults and one split");
    assert_eq!(
        s.tables_freed_deferred, 3,
        "retract, reclaim, free_pgtables"
    );
    assert_eq!(s.tables_freed_now, 0);
    assert_eq!(
        (s.retracts, s.reclaims, s.pgtables_freed, s.splits),
        (1, 1, 1, 1)
    );
    // Every installed table is gone: only the upper levels are left.
    assert_eq!(mmu.free_frames(), 2048 - 2 - upper_tables(&mmu.dump()));
    assert!(mmu.audit().checks() > 0);
    assert!(mmu.rcu().stats().callbacks_run >= 3);
    finish(&mmu);
}

#[test]
fn check_tables_reports_inconsistencies() {
    let mmu = mmu(1024);
    mmu.map_page(region(1)).unwrap();
    assert!(mmu.check_tables().is_empty());
    // A pmd that names a data frame, and a malformed one.
    let data = mmu.alloc_data_frame().unwrap();
    mmu.map_page(region(2)).unwrap();
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    let old = unsafe { mmu.inject_pmd(region(2), table_entry(data.pfn())) }.unwrap();
    let problems = mmu.check_tables();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("Data"), "{problems:?}");
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(2), POISON) }.unwrap();
    assert!(mmu.check_tables()[0].contains("malformed"));
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(region(2), old) }.unwrap();
    assert!(mmu.check_tables().is_empty());
    drop(data);
    finish(&mmu);
}
