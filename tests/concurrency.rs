//! Every PTE-table remover against concurrent walkers, with the use-after-free audit armed.
//!
//! Each test runs one remover (retract, collapse, PT_RECLAIM, THP split, munmap,
//! move_normal_pmd) on its own thread, plus, where the remover needs pages to work on, a
//! refault thread, against four walkers:
//!
//! - a lockless walker: RCU guard, `pmd_copy_lockless`, `pte_offset_map`, read PTEs,
//!   `still_installed` (case 2);
//! - a GUP-fast walker: `gup_fast`, checks that every pinned page stays allocated while pinned;
//! - a locked walker under the mmap read lock: `pmd_offset`, `pte_offset_map_lock`, read, and
//!   `set_pte(pte.mkold())` on present PTEs (case 3, `Attached`);
//! - the same under the VMA lock (`lock_vma_under_rcu`), falling back to the mmap lock when
//!   the VMA is write-locked or gone.
//!
//! Afterwards: no page-table use-after-free, `check_tables()` clean after `rcu_barrier`, no
//! anonymous page lost, the remover did work and the walkers walked. Then everything is torn
//! down with `munmap` and every frame must come back except the upper-level tables and the
//! zero pages.
//!
//! The run time of each test is `TYPED_PGTABLE_STRESS_MS` milliseconds (default 500). The rule
//! of the crate is kept throughout: no thread takes the mmap lock or any other blocking lock
//! while it holds an RCU guard (`collapse_huge_page` waits for a grace period under the mmap
//! write lock).

mod common;

use common::rng::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use typed_pgtable::mmu::{
    CollapseOutcome, FrameKind, Mmu, MmuDump, PAGE_SIZE, PMD_SIZE, PmdKind, Pte, SplitOutcome,
    VmaKind, migration_entry,
};
use typed_pgtable::provenance::{InTable, PmdRef, pte_offset_map, pte_offset_map_lock};

const LIMIT: u64 = 1 << 30;
const FRAMES: usize = 8192;
const ENTRIES: u64 = 512;

const fn region(n: u64) -> u64 {
    n * PMD_SIZE
}

fn stress_time() -> Duration {
    let ms = std::env::var("TYPED_PGTABLE_STRESS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    Duration::from_millis(ms)
}

/// What the walkers did.
#[derive(Debug, Default)]
struct Counts {
    lockless_walks: AtomicU64,
    lockless_maps: AtomicU64,
    lockless_present: AtomicU64,
    rechecks_failed: AtomicU64,
    gup_calls: AtomicU64,
    gup_pins: AtomicU64,
    pinned_freed: AtomicU64,
    mmap_walks: AtomicU64,
    mmap_locked: AtomicU64,
    vma_walks: AtomicU64,
    vma_locked: AtomicU64,
    vma_fallbacks: AtomicU64,
    writes: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// An MMU whose zero pages are already allocated, and the frame count everything must come
/// back to (free frames plus the upper-level tables, which are never freed); then the VMAs
/// `vmas` (start, length, kind) are mapped.
fn new_mmu(vmas: &[(u64, u64, VmaKind)]) -> (Mmu, usize) {
    let mmu = common::scenario::mmu_with(FRAMES, LIMIT);
    let last = LIMIT - PMD_SIZE;
    mmu.zero_pfn().unwrap();
    mmu.map_huge_zero(last).unwrap();
    mmu.unmap_huge(last).unwrap();
    mmu.rcu_barrier();
    let baseline = mmu.free_frames() + upper_tables(&mmu.dump());
    for &(start, len, kind) in vmas {
        mmu.mmap(start, len, kind).unwrap();
    }
    (mmu, baseline)
}

fn upper_tables(d: &MmuDump) -> usize {
    d.entries
        .iter()
        .filter(|&&(level, _, _)| level == 4 || level == 3)
        .count()
}

/// Addresses the walkers pick from: the first 48 pages of each region and 16 spread over it.
fn walk_set(regions: &[u64]) -> Vec<u64> {
    let mut vas = Vec::new();
    for &r in regions {
        vas.extend((0..48).map(|i| r + i * PAGE_SIZE));
        vas.extend((0..16).map(|i| r + (64 + i * 28) * PAGE_SIZE));
    }
    vas
}

fn lockless_walker(mmu: &Mmu, vas: &[u64], c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    common::until_stopped(stop, || {
        let va = vas[rng.index(vas.len())];
        {
            let guard = mmu.rcu_read_lock();
            if let Ok(Some(copy)) = mmu.pmd_copy_lockless(&guard, va) {
                if let Ok(map) = pte_offset_map(&copy, va) {
                    c.lockless_maps.fetch_add(1, Relaxed);
                    for i in 0..8 {
                        let pte = map.ptep_get(va + i * PAGE_SIZE);
                        assert!(!pte.is_bad(), "a poisoned PTE under RCU at {va:#x}");
                        if pte.is_present() {
                            c.lockless_present.fetch_add(1, Relaxed);
                        }
                    }
                    if !copy.still_installed() {
                        c.rechecks_failed.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        c.lockless_walks.fetch_add(1, Relaxed);
    });
}

fn gup_walker(mmu: &Mmu, vas: &[u64], c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    common::until_stopped(stop, || {
        let va = vas[rng.index(vas.len())];
        let pins = mmu.gup_fast(va, 1 + rng.index(8)).unwrap();
        c.gup_calls.fetch_add(1, Relaxed);
        c.gup_pins.fetch_add(pins.len() as u64, Relaxed);
        for round in 0..2 {
            for p in &pins {
                if mmu.frame_kind(p.pfn()) != Some(FrameKind::Data) {
                    c.pinned_freed.fetch_add(1, Relaxed);
                }
            }
            if round == 0 {
                // Hold the pins a little (a yield would cost a whole time slice on 2 cores).
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
            }
        }
        drop(pins);
    });
}

/// `pte_offset_map_lock`, read, age a present PTE: allowed only because the lock is `Attached`.
fn locked_step(pmd: Option<PmdRef<'_, '_, Mmu, InTable>>, va: u64, c: &Counts) -> bool {
    let Some(pmd) = pmd else {
        return false;
    };
    let Ok(pte) = pte_offset_map_lock(&pmd, va) else {
        return false;
    };
    let old = pte.ptep_get(va);
    assert!(
        !old.is_bad(),
        "a poisoned PTE under the PTE lock at {va:#x}"
    );
    if old.is_present() {
        pte.set_pte(va, old.mkold())
            .expect("a present PTE maps a data page");
        c.writes.fetch_add(1, Relaxed);
    }
    true
}

fn mmap_walker(mmu: &Mmu, vas: &[u64], c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    common::until_stopped(stop, || {
        let va = vas[rng.index(vas.len())];
        {
            let mm = mmu.mmap_read_lock();
            if locked_step(mm.pmd_offset(va).unwrap(), va, c) {
                c.mmap_locked.fetch_add(1, Relaxed);
            }
        }
        c.mmap_walks.fetch_add(1, Relaxed);
    });
}

fn vma_walker(mmu: &Mmu, vas: &[u64], c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    common::until_stopped(stop, || {
        let va = vas[rng.index(vas.len())];
        let locked = match mmu.lock_vma_under_rcu(va) {
            Some(vg) => {
                c.vma_walks.fetch_add(1, Relaxed);
                locked_step(vg.pmd_offset(va).unwrap(), va, c)
            }
            None => {
                c.vma_fallbacks.fetch_add(1, Relaxed);
                let mm = mmu.mmap_read_lock();
                locked_step(mm.pmd_offset(va).unwrap(), va, c)
            }
        };
        if locked {
            c.vma_locked.fetch_add(1, Relaxed);
        }
    });
}

impl Counts {
    /// Every walker did what it is there for.
    fn all_walked(&self) -> bool {
        [
            &self.lockless_maps,
            &self.gup_pins,
            &self.mmap_locked,
            &self.vma_locked,
            &self.writes,
        ]
        .iter()
        .all(|a| get(a) > 0)
    }
}

/// One round of a refault thread: punch a hole at a random page of the first 64 of `r1` and
/// fault it back, racing with the remover's steps.
fn punch_and_refault(mmu: &Mmu, r1: u64, mut rng: Rng) -> impl FnMut() + Send + '_ {
    move || {
        let va = r1 + rng.below(64) * PAGE_SIZE;
        mmu.madvise_dontneed(va, PAGE_SIZE, false).unwrap();
        let _ = mmu.map_page(va);
    }
}

/// Runs `remover` (and `refault`, if any) against the four walkers for the stress time, and
/// then on until the walkers have all walked and the remover did each kind of its work that
/// `did()` counts by name (at most 10 s more). Both closures are one round, run until the flag
/// is set. Then [`check_after`] (`gup_pins_checked` as there), and every kind of work in
/// `did()` must have happened, and no anonymous page may have been lost.
#[track_caller]
fn stress<const N: usize, R, F>(
    mmu: &Mmu,
    regions: &[u64],
    gup_pins_checked: bool,
    did: impl Fn() -> [(&'static str, u64); N],
    remover: R,
    refault: Option<F>,
) where
    R: FnMut() + Send,
    F: FnMut() + Send,
{
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let vas = walk_set(regions);
    let start = Instant::now();
    std::thread::scope(|s| {
        let (c, stop, vas) = (&counts, &stop, &vas[..]);
        s.spawn(move || lockless_walker(mmu, vas, c, stop, Rng(1)));
        s.spawn(move || gup_walker(mmu, vas, c, stop, Rng(2)));
        s.spawn(move || mmap_walker(mmu, vas, c, stop, Rng(3)));
        s.spawn(move || vma_walker(mmu, vas, c, stop, Rng(4)));
        s.spawn(move || common::until_stopped(stop, remover));
        if let Some(refault) = refault {
            s.spawn(move || common::until_stopped(stop, refault));
        }
        std::thread::sleep(stress_time());
        let deadline = Instant::now() + Duration::from_secs(10);
        let worked = || did().iter().all(|&(_, n)| n > 0);
        while !(c.all_walked() && worked()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Relaxed);
    });
    let elapsed = start.elapsed();
    eprintln!("{elapsed:?}: {counts:?}");
    check_after(mmu, &counts, gup_pins_checked);
    let (did, s) = (did(), mmu.stats());
    eprintln!("{did:?}, {s:?}");
    for (name, n) in did {
        assert!(n > 0, "the remover never did its {name}: {did:?}");
    }
    assert_eq!(s.anon_pages_lost, 0);
}

/// The checks after every run.
#[track_caller]
fn check_after(mmu: &Mmu, c: &Counts, gup_pins_checked: bool) {
    common::assert_clean(mmu);
    assert!(
        get(&c.lockless_walks) > 0 && get(&c.lockless_maps) > 0,
        "{c:?}"
    );
    assert!(get(&c.gup_calls) > 0 && get(&c.gup_pins) > 0, "{c:?}");
    assert!(get(&c.mmap_locked) > 0, "{c:?}");
    assert!(get(&c.vma_locked) > 0, "{c:?}");
    assert!(get(&c.writes) > 0, "{c:?}");
    if gup_pins_checked {
        assert_eq!(get(&c.pinned_freed), 0, "a pinned page was freed: {c:?}");
    }
}

/// Tears everything down and checks that every frame came back.
#[track_caller]
fn teardown(mmu: &Mmu, baseline: usize) {
    mmu.munmap(0, LIMIT).unwrap();
    mmu.rcu_barrier();
    let d = mmu.dump();
    assert!(d.deposits.is_empty(), "{:?}", d.deposits);
    assert!(d.vmas.is_empty());
    assert!(d.entries.iter().all(|&(level, _, _)| level >= 3), "{d:?}");
    assert_eq!(
        mmu.free_frames() + upper_tables(&d),
        baseline,
        "frames leaked"
    );
    assert_eq!(mmu.audit().violations(), 0);
}

/// `map_huge` (or `map_huge_zero`); if no 2 MiB run is free, waits once for the deferred frees
/// of earlier rounds (the remover holds no RCU guard) and tries again.
fn map_huge_now(mmu: &Mmu, va: u64, zero: bool) -> u64 {
    let map = |m: &Mmu| {
        if zero {
            m.map_huge_zero(va)
        } else {
            m.map_huge(va)
        }
    };
    match map(mmu) {
        Err(typed_pgtable::Error::OutOfFrames { .. }) => {
            mmu.rcu_barrier();
            map(mmu).unwrap()
        }
        other => other.unwrap(),
    }
}

/// Maps up to `n` pages from `start`, ignoring those already mapped (or in the way).
fn refill(mmu: &Mmu, start: u64, n: u64) -> u64 {
    (0..n)
        .filter(|i| mmu.map_page(start + i * PAGE_SIZE).is_ok())
        .count() as u64
}

// =============================================================================================
// Retract: retract_page_tables (rmap lock only) and retract_pte_table
// =============================================================================================

#[test]
fn retract_vs_walkers() {
    let (r1, r2, r3) = (region(1), region(2), region(3));
    let (mmu, baseline) = new_mmu(&[(r1, PMD_SIZE, VmaKind::File), (r3, PMD_SIZE, VmaKind::File)]);
    refill(&mmu, r1, 32);
    refill(&mmu, r3, 32);
    let khugepaged = AtomicU64::new(0);
    let simple = AtomicU64::new(0);
    let cows = AtomicU64::new(0);
    stress(
        &mmu,
        &[r1, r2, r3],
        true,
        || {
            [
                ("retract_page_tables", get(&khugepaged)),
                ("retract_pte_table", get(&simple)),
                ("cows", get(&cows)),
            ]
        },
        || {
            // r2 gets an anon_vma from CoW faults racing with this: B4.
            for r in [r1, r2] {
                khugepaged.fetch_add(mmu.retract_page_tables(r).unwrap() as u64, Relaxed);
            }
            if mmu.retract_pte_table(r3).is_ok() {
                simple.fetch_add(1, Relaxed);
            }
        },
        Some(|| {
            refill(&mmu, r1, 32);
            refill(&mmu, r3, 32);
            // A fresh file VMA (no anon_vma), file pages, then CoW faults.
            mmu.mmap(r2, PMD_SIZE, VmaKind::File).unwrap();
            refill(&mmu, r2, 8);
            for i in 0..2 {
                if mmu.cow_fault(r2 + i * PAGE_SIZE).is_ok() {
                    cows.fetch_add(1, Relaxed);
                }
            }
            mmu.munmap(r2, PMD_SIZE).unwrap();
        }),
    );
    assert_eq!(mmu.stats().retracts, get(&khugepaged) + get(&simple));
    teardown(&mmu, baseline);
}

// =============================================================================================
// Collapse: collapse_pte_mapped_thp and collapse_huge_page
// =============================================================================================

/// One collapser against the walkers, with holes punched and faulted back meanwhile (faults
/// race with the collapse's steps). `collapse` is one attempt at `r1`, true if it collapsed:
/// then the huge page is split back into a PTE-mapped THP for the next round and the thread
/// sleeps `pause`; a failed attempt refills the holes.
fn collapse_vs_walkers(
    kind: VmaKind,
    fill: impl FnOnce(&Mmu, u64),
    collapse: impl Fn(&Mmu, u64) -> bool + Sync,
    pause: Duration,
    seed: u64,
) {
    let r1 = region(1);
    let (mmu, baseline) = new_mmu(&[(r1, PMD_SIZE, kind)]);
    fill(&mmu, r1);
    let collapsed = AtomicU64::new(0);
    let other = AtomicU64::new(0);
    // THP subpages pinned through the huge pmd are freed by a later split and zap: see
    // ops.rs `pin_of_a_thp_subpage_survives_split_and_zap`; not asserted here.
    stress(
        &mmu,
        &[r1],
        false,
        || [("collapsed", get(&collapsed))],
        || {
            if collapse(&mmu, r1) {
                collapsed.fetch_add(1, Relaxed);
                mmu.split_huge_pmd(r1).unwrap();
                std::thread::sleep(pause);
            } else {
                other.fetch_add(1, Relaxed);
                refill(&mmu, r1, 64);
            }
        },
        Some(punch_and_refault(&mmu, r1, Rng(seed))),
    );
    eprintln!("other {}", get(&other));
    assert_eq!(mmu.stats().collapses, get(&collapsed));
    teardown(&mmu, baseline);
}

#[test]
fn collapse_pte_mapped_thp_vs_walkers() {
    collapse_vs_walkers(
        VmaKind::File,
        |mmu, r1| {
            mmu.map_pages(r1, ENTRIES as usize).unwrap();
        },
        |mmu, r1| mmu.collapse_pte_mapped_thp(r1).unwrap() == CollapseOutcome::Collapsed,
        Duration::ZERO,
        7,
    );
}

#[test]
fn collapse_huge_page_vs_walkers() {
    collapse_vs_walkers(
        VmaKind::Anon,
        |mmu, r1| {
            refill(mmu, r1, 64);
        },
        |mmu, r1| mmu.collapse_huge_page(r1) == Ok(CollapseOutcome::Collapsed),
        // khugepaged sleeps between scans; without a pause, this loop of mmap write locks
        // starves the mmap-lock walker (the lock prefers writers).
        Duration::from_micros(500),
        8,
    );
}

// =============================================================================================
// PT_RECLAIM: madvise_dontneed(.., true)
// =============================================================================================

#[test]
fn reclaim_vs_walkers() {
    let regions = [region(1), region(2), region(3)];
    let (mmu, baseline) = new_mmu(&regions.map(|r| (r, PMD_SIZE, VmaKind::Anon)));
    for r in regions {
        refill(&mmu, r, 32);
    }
    let reclaimed = AtomicU64::new(0);
    let zapped = AtomicU64::new(0);
    stress(
        &mmu,
        &regions,
        true,
        || [("reclaimed", get(&reclaimed)), ("zapped", get(&zapped))],
        || {
            for r in regions {
                let z = mmu.madvise_dontneed(r, PMD_SIZE, true).unwrap();
                reclaimed.fetch_add(z.tables_reclaimed, Relaxed);
                zapped.fetch_add(z.pages, Relaxed);
            }
            // And a partial zap, which never reclaims.
            let z = mmu
                .madvise_dontneed(regions[0] + PAGE_SIZE, 4 * PAGE_SIZE, true)
                .unwrap();
            assert_eq!(z.tables_reclaimed, 0);
        },
        Some(|| {
            for r in regions {
                refill(&mmu, r, 32);
            }
        }),
    );
    assert_eq!(mmu.stats().reclaims, get(&reclaimed));
    teardown(&mmu, baseline);
}

// =============================================================================================
// THP split: present, huge zero page, migration entry
// =============================================================================================

#[test]
fn split_vs_walkers() {
    let (r1, r2) = (region(1), region(2));
    let (mmu, baseline) = new_mmu(&[(r1, PMD_SIZE, VmaKind::Anon)]);
    let outcomes: [AtomicU64; 3] = Default::default();
    // Pins of THP subpages: see ops.rs `pin_of_a_thp_subpage_survives_split_and_zap`.
    stress(
        &mmu,
        &[r1, r2],
        false,
        || {
            [
                ("split", get(&outcomes[0])),
                ("zero split", get(&outcomes[1])),
                ("migration split", get(&outcomes[2])),
            ]
        },
        {
            let mut round = 0u64;
            let mmu = &mmu;
            let outcomes = &outcomes;
            move || {
                for r in [r1, r2] {
                    // Empty the range split last round and free its table (the other region
                    // keeps its split table meanwhile, for the walkers).
                    if round > 0 {
                        let z = mmu.madvise_dontneed(r, PMD_SIZE, true).unwrap();
                        assert_eq!(z.pages, ENTRIES);
                        if z.tables_reclaimed == 0 {
                            assert_eq!(mmu.retract_pte_table(r).unwrap(), 0);
                        }
                    }
                    let expected = match round % 3 {
                        0 => {
                            map_huge_now(mmu, r, false);
                            SplitOutcome::Split
                        }
                        1 => {
                            map_huge_now(mmu, r, true);
                            SplitOutcome::ZeroSplit
                        }
                        _ => {
                            // The page is being migrated: the pmd becomes a migration entry
                            // and the mapping's reference goes with it.
                            let head = map_huge_now(mmu, r, false);
                            // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
                            unsafe { mmu.inject_pmd(r, migration_entry(0x1000 + round)) }.unwrap();
                            // SAFETY: the test gives up a reference that the injected entry no longer holds.
                            unsafe { mmu.put_page(head) };
                            SplitOutcome::MigrationSplit
                        }
                    };
                    assert_eq!(mmu.split_huge_pmd(r + PAGE_SIZE).unwrap(), expected);
                    outcomes[(round % 3) as usize].fetch_add(1, Relaxed);
                }
                round += 1;
            }
        },
        None::<fn()>,
    );
    assert_eq!(mmu.stats().splits, outcomes.iter().map(get).sum::<u64>());
    teardown(&mmu, baseline);
}

// =============================================================================================
// munmap (free_pgtables under the exclusive token), re-mmap, refault
// =============================================================================================

#[test]
fn munmap_vs_walkers() {
    let regions = [region(1), region(2)];
    let (mmu, baseline) = new_mmu(&regions.map(|r| (r, PMD_SIZE, VmaKind::Anon)));
    for r in regions {
        refill(&mmu, r, 32);
    }
    let freed = AtomicU64::new(0);
    stress(
        &mmu,
        &regions,
        true,
        || [("freed", get(&freed))],
        || {
            for r in regions {
                freed.fetch_add(mmu.munmap(r, PMD_SIZE).unwrap() as u64, Relaxed);
                mmu.mmap(r, PMD_SIZE, VmaKind::Anon).unwrap();
                refill(&mmu, r, 32);
            }
        },
        None::<fn()>,
    );
    assert_eq!(mmu.stats().pgtables_freed, get(&freed));
    teardown(&mmu, baseline);
}

// =============================================================================================
// move_normal_pmd
// =============================================================================================

#[test]
fn move_normal_pmd_vs_walkers() {
    let (a, b) = (region(1), region(2));
    let (mmu, baseline) = new_mmu(&[(a, 2 * PMD_SIZE, VmaKind::Anon)]);
    let pages = mmu.map_pages(a, 32).unwrap();
    let moves = AtomicU64::new(0);
    stress(
        &mmu,
        &[a, b],
        true,
        || [("moves", get(&moves))],
        || {
            mmu.move_normal_pmd(a, b).unwrap();
            mmu.move_normal_pmd(b, a).unwrap();
            moves.fetch_add(2, Relaxed);
        },
        None::<fn()>,
    );
    assert_eq!(mmu.stats().pmd_moves, get(&moves));
    // Every page is still mapped, at its place in the table, in the region the table is in
    // (after an even number of moves: back at `a`).
    let d = mmu.dump();
    assert!(d.entries.iter().any(|&(l, va, _)| l == 2 && va == a));
    assert!(!d.entries.iter().any(|&(l, va, _)| l == 2 && va == b));
    for (i, &pfn) in pages.iter().enumerate() {
        let off = i as u64 * PAGE_SIZE;
        assert_eq!(mmu.translate(a + off), Ok(Some(pfn << 12)));
        assert_eq!(mmu.translate(b + off), Ok(None));
        assert_eq!(mmu.page_refs(pfn), 1);
    }
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(a).unwrap().unwrap();
    assert!(matches!(pmd.pmd_val().kind(), PmdKind::Table(_)));
    let map = pte_offset_map(&pmd, a).unwrap();
    assert!(map.entries().take(32).all(|p: Pte| p.is_anon()));
    drop(map);
    drop(mm);
    teardown(&mmu, baseline);
}

// =============================================================================================
// The per-VMA lock: a writer must not starve behind a stream of readers
// =============================================================================================

/// `vma_start_write` (taken by `collapse_huge_page` and `munmap`) against two threads that
/// keep taking the VMA read lock (`lock_vma_under_rcu`, as faults and `MADV_DONTNEED` do). In
/// the kernel a writer marks the VMA first, so new readers fail at once and fall back to the
/// mmap lock, and it only waits for the readers already inside.
#[test]
fn vma_start_write_is_not_starved_by_readers() {
    let r1 = region(1);
    let (mmu, _) = new_mmu(&[(r1, PMD_SIZE, VmaKind::Anon)]);
    mmu.map_pages(r1, 32).unwrap();
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let worst = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                common::until_stopped(&stop, || {
                    if let Some(vg) = mmu.lock_vma_under_rcu(r1) {
                        let pmd = vg.pmd_offset(r1).unwrap().unwrap();
                        let pte = pte_offset_map_lock(&pmd, r1).unwrap();
                        for _ in 0..200 {
                            std::hint::spin_loop();
                        }
                        drop(pte);
                    }
                });
            });
        }
        let writer = s.spawn(|| {
            let mut worst = Duration::ZERO;
            for _ in 0..5 {
                let t = Instant::now();
                {
                    let mm = mmu.mmap_write_lock();
                    let vw = mm.vma_start_write(r1).unwrap();
                    drop(vw);
                }
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            done.store(true, Relaxed);
            worst
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done.load(Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let a starved writer through, then report how long it waited.
        stop.store(true, Relaxed);
        writer.join().unwrap()
    });
    assert!(
        worst < Duration::from_millis(500),
        "vma_start_write waited {worst:?}"
    );
}
