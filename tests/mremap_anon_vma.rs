//! A moved PTE table keeps its `anon_vma`: `move_normal_pmd` against `retract_page_tables`.
//!
//! *What went wrong:* `Mmu::move_normal_pmd` moved a PTE table to any empty pmd slot, with or
//! without a VMA there. The main job (`examples/torture.rs`) parked a region's table at a spare
//! address with no VMA and moved it back later. Between the two moves another thread could
//! `munmap` the region (nothing to zap: the table was away) and `mmap` it again, which gives a
//! new file VMA with no `anon_vma`. The table came back with the COW (anonymous) pages of the
//! old VMA, and `retract_page_tables`, whose only guard against anonymous pages is the VMA's
//! `anon_vma` (rule I6, bug B4), freed them: `anon_pages_lost` went up, and a user's page was
//! gone. 300 s soaks lost 1 to 5 pages; `--only mremap,munmap,retract,cow,...` did so in
//! 120 s.
//!
//! *Invariant:* every anonymous page lies in a VMA whose `anon_vma` is set. The kernel keeps it
//! across mremap because the destination is the moved VMA itself: `copy_vma` gives it the
//! source's `anon_vma` before `move_page_tables` runs. Here VMAs stay put, so the fix is the
//! same rule stated for page tables: both ranges must be inside VMAs of the same kind, and the
//! destination VMA gets the source's `anon_vma` before the table is reachable there.
//!
//! [`replay_park_munmap_mmap_return_retract`] is the torture's interleaving, one step at a
//! time, on one thread; it loses the page without the fix. The other tests pin down the
//! refusals and the flag's propagation, and [`moves_vs_munmap_cow_and_retract`] runs the
//! racing operations together on one region for a bounded time.
//!
//! A second layer backs the flag: under its locks `retract_page_tables` also refuses a table
//! that maps an anonymous page, however it got there
//! ([`retract_keeps_a_table_with_anonymous_pages_whatever_its_vma_says`]). With both layers
//! removed (the code before the fix) the race test loses pages within a second; with only
//! the flag's hand-over removed, the tests that check the flag and the refusals fail.

mod common;

use common::{Stopwatch, assert_clean};
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;
use typed_pgtable::Error;
use typed_pgtable::mmu::{Mmu, MmuConfig, PAGE_SIZE, PMD_SIZE, VmaKind};

/// The region whose table moves.
const A: u64 = 0x4000_0000;
/// Where it is parked.
const S: u64 = 0x8000_0000;
/// A page in the region.
const VA: u64 = A + 5 * PAGE_SIZE;

fn new_mmu() -> Mmu {
    Mmu::new(MmuConfig {
        frames: 4096,
        va_limit: 1 << 32,
    })
    .unwrap()
}

/// The frame mapped at `va`.
fn pfn_at(mmu: &Mmu, va: u64) -> Option<u64> {
    mmu.translate(va).unwrap().map(|pa| pa / PAGE_SIZE)
}

/// A file VMA at `A` with one page copied on write: an anonymous page, and `anon_vma` set.
fn cowed_file_region(mmu: &Mmu) -> u64 {
    mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
    mmu.map_page(VA).unwrap();
    let anon = mmu.cow_fault(VA).unwrap();
    assert!(mmu.find_vma(A).unwrap().anon_vma);
    anon
}

/// An MMU with two file VMAs and nothing mapped: the region at `A` and a slot to park its
/// table at `S`.
fn region_and_parking_slot() -> Mmu {
    let mmu = new_mmu();
    mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
    mmu.mmap(S, PMD_SIZE, VmaKind::File).unwrap();
    mmu
}

/// The cowed file region at `A` ([`cowed_file_region`]) and a file VMA at `S` to park its
/// table in, without an `anon_vma` yet; returns the MMU and the anonymous page.
fn cowed_region_and_parking_slot() -> (Mmu, u64) {
    let mmu = new_mmu();
    let anon = cowed_file_region(&mmu);
    mmu.mmap(S, PMD_SIZE, VmaKind::File).unwrap();
    assert!(!mmu.find_vma(S).unwrap().anon_vma);
    (mmu, anon)
}

/// After a grace period the anonymous page `anon` is still mapped at `va`, no anonymous page
/// was lost, and the MMU is clean.
#[track_caller]
fn assert_anon_page_kept(mmu: &Mmu, va: u64, anon: u64) {
    mmu.rcu_barrier();
    assert_eq!(pfn_at(mmu, va), Some(anon));
    assert_eq!(mmu.stats().anon_pages_lost, 0);
    assert_clean(mmu);
}

#[test]
fn replay_park_munmap_mmap_return_retract() {
    let mmu = new_mmu();
    let anon = cowed_file_region(&mmu);
    // The torture's mremap: park the table where no VMA is ...
    let parked = mmu.move_normal_pmd(A, S);
    // ... another updater's munmap + mmap of the region meanwhile ...
    mmu.munmap(A, PMD_SIZE).unwrap();
    let back = mmu.move_normal_pmd(S, A);
    mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
    // ... and khugepaged.
    let retracted = mmu.retract_page_tables(A).unwrap();
    mmu.rcu_barrier();
    assert_eq!(
        mmu.stats().anon_pages_lost,
        0,
        "anonymous page {anon:#x} freed by the retract (park {parked:?}, return {back:?}, \
         {retracted} retracted)"
    );
    // The fix refuses the park: the page stayed and munmap zapped it, as munmap should.
    assert_eq!(parked, Err(Error::NotInVma { addr: S }));
    assert_clean(&mmu);
}

#[test]
fn the_destination_vma_gets_the_anon_vma() {
    let (mmu, anon) = cowed_region_and_parking_slot();
    mmu.move_normal_pmd(A, S).unwrap();
    assert!(mmu.find_vma(S).unwrap().anon_vma);
    assert_eq!(pfn_at(&mmu, S + 5 * PAGE_SIZE), Some(anon));
    // The region is replaced by a fresh VMA and the table comes back: it still says so.
    mmu.munmap(A, PMD_SIZE).unwrap();
    mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
    assert!(!mmu.find_vma(A).unwrap().anon_vma);
    mmu.move_normal_pmd(S, A).unwrap();
    assert!(mmu.find_vma(A).unwrap().anon_vma);
    // So khugepaged leaves it alone, and the page stays mapped.
    assert_eq!(mmu.retract_page_tables(A).unwrap(), 0);
    assert_anon_page_kept(&mmu, VA, anon);
}

#[test]
fn a_table_without_anonymous_pages_moves_without_an_anon_vma() {
    let mmu = region_and_parking_slot();
    let file = mmu.map_page(VA).unwrap();
    mmu.move_normal_pmd(A, S).unwrap();
    assert!(!mmu.find_vma(S).unwrap().anon_vma);
    // A file table stays retractable where it went.
    assert_eq!(pfn_at(&mmu, S + 5 * PAGE_SIZE), Some(file));
    assert_eq!(mmu.retract_page_tables(S).unwrap(), 1);
    assert_clean(&mmu);
}

#[test]
fn moves_outside_a_vma_or_across_kinds_are_refused_and_change_nothing() {
    let mmu = new_mmu();
    cowed_file_region(&mmu);
    // No VMA at the destination, one of the other kind, one that covers only half the range.
    mmu.mmap(S + PMD_SIZE, PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(S + 2 * PMD_SIZE, PMD_SIZE / 2, VmaKind::File)
        .unwrap();
    for to in [S, S + PMD_SIZE, S + 2 * PMD_SIZE] {
        let before = mmu.dump();
        assert_eq!(
            mmu.move_normal_pmd(A, to),
            Err(Error::NotInVma { addr: to })
        );
        assert_eq!(mmu.dump(), before, "move to {to:#x} changed something");
    }
    // No VMA at the source: a table mapped outside any VMA stays where it is.
    let outside = 0x1_0000_0000u64 - 2 * PMD_SIZE;
    mmu.map_page(outside).unwrap();
    let before = mmu.dump();
    assert_eq!(
        mmu.move_normal_pmd(outside, A),
        Err(Error::NotInVma { addr: outside })
    );
    assert_eq!(mmu.dump(), before);
    assert_eq!(mmu.stats().pmd_moves, 0);
    assert_clean(&mmu);
}

/// The second layer: a table with anonymous pages moved by hand (detached under the locks,
/// populated at another slot) into a file VMA without `anon_vma` is not retracted either.
#[test]
fn retract_keeps_a_table_with_anonymous_pages_whatever_its_vma_says() {
    use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_lock};
    let (mmu, anon) = cowed_region_and_parking_slot();
    {
        let mm = mmu.mmap_read_lock();
        let old = mm.pmd_offset(A).unwrap().unwrap();
        let new = mm.pmd_alloc(S).unwrap();
        let pml = pmd_lock(&old);
        let ptl = pte_offset_map_lock(&old, A).unwrap();
        let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
        drop(pml);
        let pml = pmd_lock(&new);
        table.pmd_populate(&mm, &pml).map_err(|r| r.error).unwrap();
    }
    assert!(!mmu.find_vma(S).unwrap().anon_vma);
    assert_eq!(mmu.retract_page_tables(S).unwrap(), 0);
    assert_anon_page_kept(&mmu, S + 5 * PAGE_SIZE, anon);
}

/// The racing operations of the torture run on one region, so that their windows meet often:
/// a mover that parks the table and brings it back, an updater that COWs pages and replaces
/// the VMA (`munmap` + `mmap` + faults), and khugepaged retracting. No anonymous page may be
/// lost, whatever the interleaving.
#[test]
fn moves_vs_munmap_cow_and_retract() {
    let mmu = region_and_parking_slot();
    let stop = AtomicBool::new(false);
    let clock = Stopwatch::new(Duration::from_millis(800));
    thread::scope(|s| {
        s.spawn(|| {
            common::until_stopped(&stop, || {
                if mmu.move_normal_pmd(A, S).is_ok() && mmu.move_normal_pmd(S, A).is_err() {
                    // The region was refaulted meanwhile: drop what was parked.
                    let _ = mmu.madvise_dontneed(S, PMD_SIZE, true);
                }
            });
        });
        s.spawn(|| {
            let mut i = 0u64;
            common::until_stopped(&stop, || {
                i += 1;
                let va = A + (i % 8) * PAGE_SIZE;
                let _ = mmu.map_page(va);
                let _ = mmu.cow_fault(va);
                if i % 4 == 0 {
                    mmu.munmap(A, PMD_SIZE).unwrap();
                    mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
                }
            });
        });
        s.spawn(|| {
            common::until_stopped(&stop, || {
                let _ = mmu.retract_page_tables(A);
                let _ = mmu.retract_page_tables(S);
            });
        });
        clock.wait_then_stop(&stop, || mmu.stats().pmd_moves > 100);
    });
    mmu.rcu_barrier();
    assert!(mmu.stats().pmd_moves > 0, "the mover never moved");
    assert_eq!(mmu.stats().anon_pages_lost, 0);
    assert_clean(&mmu);
}
