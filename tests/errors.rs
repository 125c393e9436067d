//! One test per error case of the in-memory MMU.
//!
//! Each test asserts the exact error value (variant and fields) and that the failing call left
//! the MMU unchanged: `dump()` before equals `dump()` after (page tables, deposits and the
//! free-frame count).

use typed_pgtable::mmu::{Mmu, MmuConfig, MmuDump, PAGE_SIZE, PMD_SIZE, PmdKind, VA_LIMIT_MAX};
use typed_pgtable::provenance::{
    DetachedPmd, pmd_lock, pmdp_collapse_flush, pmdp_get_lockless, pte_offset_map,
    pte_offset_map_lock,
};
use typed_pgtable::{Error, NoMap};

/// 8 MiB of virtual space (four pmds), 2048 frames (three usable 2 MiB runs).
fn small() -> Mmu {
    Mmu::new(MmuConfig {
        frames: 2048,
        va_limit: 4 * PMD_SIZE,
    })
    .expect("valid config")
}

fn tiny() -> Mmu {
    Mmu::new(MmuConfig {
        frames: 16,
        va_limit: 4 * PMD_SIZE,
    })
    .expect("valid config")
}

/// Runs `f` and asserts that the MMU's dump is the same before and after.
#[track_caller]
fn unchanged<T>(mmu: &Mmu, f: impl FnOnce(&Mmu) -> T) -> T {
    mmu.rcu_barrier();
    let before: MmuDump = mmu.dump();
    let out = f(mmu);
    mmu.rcu_barrier();
    let after = mmu.dump();
    assert_eq!(before, after, "a failing call changed the MMU");
    out
}

/// Some state to compare against: two small pages in region 0, a huge page in region 2.
fn populated() -> Mmu {
    let mmu = small();
    mmu.map_page(0x1000).unwrap();
    mmu.map_page(0x5000).unwrap();
    mmu.map_huge(2 * PMD_SIZE).unwrap();
    mmu
}

// ---------------------------------------------------------------------------------------------
// The refused calls
// ---------------------------------------------------------------------------------------------

use Call::*;

/// A call of the MMU that takes one address: the rows of the refusal tables below.
#[derive(Debug, Clone, Copy)]
enum Call {
    MapPage,
    UnmapPage,
    MapHuge,
    UnmapHuge,
    RetractPteTable,
    Translate,
    /// The locked walk: `pmd_offset` under the mmap read lock.
    PmdOffset,
    /// The lockless walk: `pmd_copy_lockless` in an RCU read section.
    PmdCopyLockless,
}

impl Call {
    /// Runs the call at `va`; on success, what it returned, as text.
    fn run(self, mmu: &Mmu, va: u64) -> Result<String, Error> {
        fn shown<T: std::fmt::Debug>(r: Result<T, Error>) -> Result<String, Error> {
            r.map(|v| format!("{v:?}"))
        }
        match self {
            Call::MapPage => shown(mmu.map_page(va)),
            Call::UnmapPage => shown(mmu.unmap_page(va)),
            Call::MapHuge => shown(mmu.map_huge(va)),
            Call::UnmapHuge => shown(mmu.unmap_huge(va)),
            Call::RetractPteTable => shown(mmu.retract_pte_table(va)),
            Call::Translate => shown(mmu.translate(va)),
            Call::PmdOffset => {
                let mm = mmu.mmap_read_lock();
                shown(mm.pmd_offset(va).map(|p| p.is_some()))
            }
            Call::PmdCopyLockless => {
                let guard = mmu.rcu_read_lock();
                shown(mmu.pmd_copy_lockless(&guard, va).map(|p| p.is_some()))
            }
        }
    }
}

/// Every call of `calls` at every address of `vas` fails with `expected(va)` and leaves the
/// MMU unchanged; a failure names the call and the address.
#[track_caller]
fn refused(mmu: &Mmu, calls: &[Call], vas: &[u64], expected: impl Fn(u64) -> Error) {
    for &va in vas {
        for &call in calls {
            let got = unchanged(mmu, |m| call.run(m, va));
            assert_eq!(got, Err(expected(va)), "{call:?} at {va:#x}");
        }
    }
}

/// The errors that carry only the address, as `refused` expects them.
fn non_canonical(addr: u64) -> Error {
    Error::NonCanonical { addr }
}
fn already_mapped(addr: u64) -> Error {
    Error::AlreadyMapped { addr }
}
fn not_mapped(addr: u64) -> Error {
    Error::NotMapped { addr }
}
fn huge_in_the_way(addr: u64) -> Error {
    Error::HugeInTheWay { addr }
}
fn table_in_the_way(addr: u64) -> Error {
    Error::TableInTheWay { addr }
}

/// `Misaligned` for a call that wants `align`.
fn misaligned(align: u64) -> impl Fn(u64) -> Error {
    move |addr| Error::Misaligned { addr, align }
}

// ---------------------------------------------------------------------------------------------
// NonCanonical
// ---------------------------------------------------------------------------------------------

const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

/// The default MMU (the full 47-bit space) with one page mapped.
fn full_range_with_a_page() -> Mmu {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(0x1000).unwrap();
    mmu
}

#[test]
fn non_canonical_map_page() {
    let mmu = full_range_with_a_page();
    let high = 0x1234_0000_0000_0000;
    let vas = [NON_CANONICAL, high];
    refused(&mmu, &[MapPage], &vas, non_canonical);
}

#[test]
fn non_canonical_translate_and_others() {
    let mmu = full_range_with_a_page();
    let calls = [
        Translate,
        UnmapPage,
        MapHuge,
        UnmapHuge,
        RetractPteTable,
        // Walks check the address too.
        PmdOffset,
        PmdCopyLockless,
    ];
    refused(&mmu, &calls, &[NON_CANONICAL], non_canonical);
}

// ---------------------------------------------------------------------------------------------
// Misaligned
// ---------------------------------------------------------------------------------------------

#[test]
fn misaligned_map_page() {
    let mmu = populated();
    // Misaligned takes precedence over "already mapped" (0x1000 is mapped).
    refused(&mmu, &[MapPage], &[0x1001, 0x1800], misaligned(PAGE_SIZE));
    refused(&mmu, &[UnmapPage], &[0x1008], misaligned(PAGE_SIZE));
}

#[test]
fn misaligned_map_huge() {
    let mmu = populated();
    refused(
        &mmu,
        &[MapHuge],
        &[0x1000, PMD_SIZE + PMD_SIZE / 2],
        misaligned(PMD_SIZE),
    );
    // The huge page at 2 MiB * 2 is mapped; an address inside it is still just misaligned.
    refused(
        &mmu,
        &[UnmapHuge],
        &[2 * PMD_SIZE + PAGE_SIZE],
        misaligned(PMD_SIZE),
    );
}

// ---------------------------------------------------------------------------------------------
// OutOfRange
// ---------------------------------------------------------------------------------------------

#[test]
fn out_of_range() {
    let mmu = populated();
    let limit = 4 * PMD_SIZE;
    let out_of_range = |addr| Error::OutOfRange { addr, limit };
    let small = [MapPage, UnmapPage, Translate];
    refused(
        &mmu,
        &small,
        &[limit, limit + PAGE_SIZE, 1 << 40],
        out_of_range,
    );
    let huge = [MapHuge, UnmapHuge, RetractPteTable];
    refused(&mmu, &huge, &[limit], out_of_range);
    // A canonical upper-half (kernel) address is out of range, not non-canonical.
    refused(&mmu, &[MapPage], &[0xffff_8000_0000_0000], out_of_range);
    // The last page below the limit is fine.
    assert_eq!(mmu.translate(limit - PAGE_SIZE), Ok(None));
    mmu.map_page(limit - PAGE_SIZE).unwrap();
}

// ---------------------------------------------------------------------------------------------
// AlreadyMapped
// ---------------------------------------------------------------------------------------------

#[test]
fn already_mapped_page() {
    let mmu = populated();
    let pfn = mmu.translate(0x1000).unwrap().unwrap() >> 12;
    refused(&mmu, &[MapPage], &[0x1000], |addr| Error::AlreadyMapped {
        addr,
    });
    // The original mapping is untouched.
    assert_eq!(mmu.translate(0x1abc), Ok(Some((pfn << 12) | 0xabc)));
}

#[test]
fn already_mapped_huge() {
    let mmu = populated();
    let va = 2 * PMD_SIZE;
    let pa = mmu.translate(va).unwrap().unwrap();
    refused(&mmu, &[MapHuge], &[va], |addr| Error::AlreadyMapped {
        addr,
    });
    assert_eq!(mmu.translate(va + 0x1234), Ok(Some(pa + 0x1234)));
}

// ---------------------------------------------------------------------------------------------
// NotMapped
// ---------------------------------------------------------------------------------------------

#[test]
fn not_mapped_on_empty_mmu() {
    // No upper-level tables at all.
    let mmu = small();
    refused(&mmu, &[UnmapPage, RetractPteTable], &[0x3000], not_mapped);
    refused(&mmu, &[UnmapHuge], &[0], not_mapped);
    assert_eq!(mmu.translate(0x3000), Ok(None));
}

#[test]
fn not_mapped_unmap_page() {
    let mmu = populated();
    // A PTE table exists (region 0) but the entry at 0x2000 is empty; the pmd of region 1 is
    // none.
    refused(&mmu, &[UnmapPage], &[0x2000, PMD_SIZE], not_mapped);
    // Unmapped twice.
    mmu.unmap_page(0x5000).unwrap();
    refused(&mmu, &[UnmapPage], &[0x5000], not_mapped);
}

#[test]
fn not_mapped_unmap_huge() {
    let mmu = populated();
    refused(&mmu, &[UnmapHuge], &[PMD_SIZE], not_mapped);
    mmu.unmap_huge(2 * PMD_SIZE).unwrap();
    refused(&mmu, &[UnmapHuge], &[2 * PMD_SIZE], not_mapped);
}

#[test]
fn not_mapped_retract() {
    let mmu = populated();
    refused(&mmu, &[RetractPteTable], &[PMD_SIZE + 0x1234], not_mapped);
    // Retracting the table of region 0 twice.
    assert_eq!(mmu.retract_pte_table(0x7000), Ok(2));
    refused(&mmu, &[RetractPteTable], &[0x7000], not_mapped);
}

// ---------------------------------------------------------------------------------------------
// HugeInTheWay
// ---------------------------------------------------------------------------------------------

/// Was `huge_in_the_way_map_page`, `huge_in_the_way_unmap_page` and
/// `huge_in_the_way_retract`: each call on the huge page of region 2.
#[test]
fn huge_in_the_way_of_small_page_calls() {
    let mmu = populated();
    let map_page = [
        2 * PMD_SIZE,
        2 * PMD_SIZE + PAGE_SIZE,
        3 * PMD_SIZE - PAGE_SIZE,
    ];
    refused(&mmu, &[MapPage], &map_page, huge_in_the_way);
    refused(
        &mmu,
        &[UnmapPage],
        &[2 * PMD_SIZE + 0x10_0000],
        huge_in_the_way,
    );
    refused(
        &mmu,
        &[RetractPteTable],
        &[2 * PMD_SIZE + 0x4321],
        huge_in_the_way,
    );
}

// ---------------------------------------------------------------------------------------------
// TableInTheWay
// ---------------------------------------------------------------------------------------------

#[test]
fn table_in_the_way_map_huge() {
    let mmu = populated();
    refused(&mmu, &[MapHuge, UnmapHuge], &[0], table_in_the_way);
}

#[test]
fn table_in_the_way_even_when_empty() {
    // unmap_page leaves the (now empty) PTE table in place; map_huge still refuses.
    let mmu = populated();
    mmu.unmap_page(0x1000).unwrap();
    mmu.unmap_page(0x5000).unwrap();
    mmu.rcu_barrier();
    let mm = mmu.mmap_read_lock();
    assert!(matches!(
        mm.pmd_offset(0).unwrap().unwrap().pmd_val().kind(),
        PmdKind::Table(_)
    ));
    drop(mm);
    refused(&mmu, &[MapHuge], &[0], table_in_the_way);
    // After retracting the empty table the huge map goes through.
    assert_eq!(mmu.retract_pte_table(0), Ok(0));
    mmu.map_huge(0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// OutOfFrames
// ---------------------------------------------------------------------------------------------

/// The shortage error for `needed` frames with `free` left, whatever the address.
fn out_of_frames(needed: usize, free: usize) -> impl Fn(u64) -> Error {
    move |_| Error::OutOfFrames { needed, free }
}

/// 1024 frames and the 8 MiB space: one aligned run of 512 frames (512..1024), as frame 0 is
/// reserved and frames 0..512 never form a run.
fn one_huge_run() -> Mmu {
    Mmu::new(MmuConfig {
        frames: 1024,
        va_limit: 4 * PMD_SIZE,
    })
    .unwrap()
}

#[test]
fn out_of_frames_map_page() {
    let mmu = tiny();
    // 16 frames: frame 0 is reserved, one is the PGD.
    assert_eq!(mmu.free_frames(), 14);
    // The first page needs a PUD, a PMD, a PTE table and the data frame.
    mmu.map_page(0).unwrap();
    assert_eq!(mmu.free_frames(), 10);
    // Nine more pages in region 0: one frame each.
    for i in 1..10 {
        mmu.map_page(i * PAGE_SIZE).unwrap();
    }
    assert_eq!(mmu.free_frames(), 1);
    // Region 1 needs a PTE table and a data frame: two.
    refused(&mmu, &[MapPage], &[PMD_SIZE], out_of_frames(2, 1));
    assert_eq!(mmu.translate(PMD_SIZE), Ok(None));
    // The last frame still goes to a page in region 0.
    mmu.map_page(10 * PAGE_SIZE).unwrap();
    assert_eq!(mmu.free_frames(), 0);
    refused(&mmu, &[MapPage], &[11 * PAGE_SIZE], out_of_frames(1, 0));
    // Freeing one page makes room again (after the grace period).
    mmu.unmap_page(0).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.free_frames(), 1);
    mmu.map_page(11 * PAGE_SIZE).unwrap();
    assert_eq!(mmu.audit().violations(), 0);
}

#[test]
fn out_of_frames_map_page_until_exhausted() {
    // The generic version: keep mapping until the arena runs dry, wherever that is.
    let mmu = tiny();
    let mut mapped = 0;
    let err = loop {
        match mmu.map_page(mapped * PAGE_SIZE) {
            Ok(_) => mapped += 1,
            Err(e) => break e,
        }
        assert!(mapped < 64, "16 frames cannot hold 64 pages");
    };
    assert_eq!(err, Error::OutOfFrames { needed: 1, free: 0 });
    assert_eq!(mapped, 11);
    refused(&mmu, &[MapPage], &[mapped * PAGE_SIZE], out_of_frames(1, 0));
}

/// Maps small pages from `va` on until no frame is left.
fn drain_from(mmu: &Mmu, mut va: u64) -> u64 {
    while mmu.map_page(va).is_ok() {
        va += PAGE_SIZE;
    }
    assert_eq!(mmu.free_frames(), 0);
    va
}

#[test]
fn already_mapped_and_huge_in_the_way_beat_out_of_frames() {
    // With no frame left, a map onto an existing mapping still reports the mapping, not the
    // shortage: the checks come before the allocation.
    let mmu = tiny();
    let va = drain_from(&mmu, 0);
    refused(&mmu, &[MapPage], &[0, va - PAGE_SIZE], already_mapped);
    refused(&mmu, &[MapHuge], &[0], table_in_the_way);
    // A huge page with no frame left: a 1024-frame MMU holds one huge page and then is drained
    // with small pages.
    let mmu = one_huge_run();
    mmu.map_huge(0).unwrap();
    drain_from(&mmu, PMD_SIZE);
    refused(&mmu, &[MapPage], &[0x3000], huge_in_the_way);
    refused(&mmu, &[MapHuge], &[0], already_mapped);
}

#[test]
fn out_of_frames_map_huge_tiny() {
    let mmu = tiny();
    mmu.map_page(0x1000).unwrap();
    // The reservation (a deposit table) succeeds, the 512-frame run cannot.
    refused(&mmu, &[MapHuge], &[PMD_SIZE], out_of_frames(512, 10 - 1));
    assert_eq!(mmu.translate(PMD_SIZE), Ok(None));
}

#[test]
fn out_of_frames_map_huge_upper_levels_missing() {
    // On an empty MMU the reservation needs a PUD, a PMD and the deposit.
    let mmu = tiny();
    refused(&mmu, &[MapHuge], &[0], out_of_frames(512, 14 - 3));
}

#[test]
fn out_of_frames_map_huge_no_contiguous_run() {
    let mmu = one_huge_run();
    let first = mmu.map_huge(0).unwrap();
    assert_eq!(first, 512);
    let free = mmu.free_frames();
    assert!(
        free > 512 - 8,
        "plenty of frames are free, just not contiguous"
    );
    refused(&mmu, &[MapHuge], &[PMD_SIZE], out_of_frames(512, free - 1));
    // Small pages still work.
    mmu.map_page(PMD_SIZE).unwrap();
    mmu.unmap_huge(0).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.map_huge(3 * PMD_SIZE), Ok(512));
}

// ---------------------------------------------------------------------------------------------
// WrongMmu
// ---------------------------------------------------------------------------------------------

/// Runs `scenario` on two populated MMUs, which a call that mixes them up must leave
/// unchanged, both of them.
fn across_two_mmus(scenario: impl FnOnce(&Mmu, &Mmu)) {
    let a = populated();
    let b = populated();
    let (da, db) = (a.dump(), b.dump());
    scenario(&a, &b);
    assert_eq!(a.dump(), da);
    assert_eq!(b.dump(), db);
}

#[test]
fn wrong_mmu_pmd_copy_lockless() {
    across_two_mmus(|a, b| {
        let guard_a = a.rcu_read_lock();
        let r = b.pmd_copy_lockless(&guard_a, 0x1000);
        assert_eq!(r.unwrap_err(), Error::WrongMmu);
        // The right guard works.
        let guard_b = b.rcu_read_lock();
        assert!(b.pmd_copy_lockless(&guard_b, 0x1000).unwrap().is_some());
    });
}

#[test]
fn wrong_mmu_pmdp_get_lockless() {
    across_two_mmus(|a, b| {
        let mm_b = b.mmap_read_lock();
        let pmd_b = mm_b.pmd_offset(0x1000).unwrap().unwrap();
        let guard_a = a.rcu_read_lock();
        assert_eq!(
            pmdp_get_lockless(&pmd_b, &guard_a).unwrap_err(),
            Error::WrongMmu
        );
        let guard_b = b.rcu_read_lock();
        let copy = pmdp_get_lockless(&pmd_b, &guard_b).unwrap();
        assert!(pte_offset_map(&copy, 0x1000).unwrap().pte().is_present());
    });
}

#[test]
fn wrong_mmu_pmd_populate() {
    let a = small();
    let b = small();
    // Make b's upper levels exist, so the walk below allocates nothing.
    b.map_page(0x1000).unwrap();
    let free_a = a.free_frames();
    let table = DetachedPmd::pte_alloc_one(&a).unwrap();
    assert_eq!(a.free_frames(), free_a - 1);
    let (da, db) = (a.dump(), b.dump());
    let rejected = {
        let mm_b = b.mmap_read_lock();
        let pmd_b = mm_b.pmd_offset(PMD_SIZE).unwrap().unwrap();
        assert_eq!(pmd_b.pmd_val().kind(), PmdKind::None);
        let pml_b = pmd_lock(&pmd_b);
        table.pmd_populate(&mm_b, &pml_b).unwrap_err()
    };
    assert_eq!(rejected.error, Error::WrongMmu);
    assert_eq!(a.dump(), da);
    assert_eq!(b.dump(), db);
    assert_eq!(b.translate(PMD_SIZE), Ok(None));
    // The table comes back unchanged and is still a's to free.
    rejected.value.pte_free();
    assert_eq!(a.free_frames(), free_a);
    assert_eq!(a.audit().violations(), 0);
    assert_eq!(b.audit().violations(), 0);
}

#[test]
fn wrong_mmu_collapse_flush() {
    across_two_mmus(|a, b| {
        let mm_a = a.mmap_read_lock();
        let mm_b = b.mmap_read_lock();
        let pmd_a = mm_a.pmd_offset(0x1000).unwrap().unwrap();
        let pmd_b = mm_b.pmd_offset(0x1000).unwrap().unwrap();
        let pml_b = pmd_lock(&pmd_b);
        let ptl_a = pte_offset_map_lock(&pmd_a, 0x1000).unwrap();
        let rejected = pmdp_collapse_flush(&pml_b, ptl_a).unwrap_err();
        assert_eq!(rejected.error, Error::WrongMmu);
        assert!(rejected.value.pte().is_present());
    });
}

// ---------------------------------------------------------------------------------------------
// PmdChanged, SlotOccupied
// ---------------------------------------------------------------------------------------------

#[test]
fn pmd_changed_collapse_with_lock_of_another_table() {
    let mmu = populated();
    mmu.map_page(PMD_SIZE).unwrap();
    let before = mmu.dump();
    {
        let mm = mmu.mmap_read_lock();
        let pmd0 = mm.pmd_offset(0x1000).unwrap().unwrap();
        let pmd1 = mm.pmd_offset(PMD_SIZE).unwrap().unwrap();
        // The PMD lock of slot 1 with the PTE lock of slot 0's table: pmd_same fails.
        let pml1 = pmd_lock(&pmd1);
        let ptl0 = pte_offset_map_lock(&pmd0, 0x1000).unwrap();
        let rejected = pmdp_collapse_flush(&pml1, ptl0).unwrap_err();
        assert_eq!(rejected.error, Error::PmdChanged);
    }
    assert_eq!(mmu.dump(), before);
    assert!(mmu.translate(0x1000).unwrap().is_some());
}

#[test]
fn slot_occupied_pmd_populate() {
    let mmu = populated();
    let free = mmu.free_frames();
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    let before = mmu.dump();
    let rejected = {
        let mm = mmu.mmap_read_lock();
        // A PTE table occupies the slot of region 0.
        let pmd = mm.pmd_offset(0x1000).unwrap().unwrap();
        let pml = pmd_lock(&pmd);
        let rejected = table.pmd_populate(&mm, &pml).unwrap_err();
        assert_eq!(rejected.error, Error::SlotOccupied);
        drop(pml);
        // A huge page occupies the slot of region 2.
        let pmd = mm.pmd_offset(2 * PMD_SIZE).unwrap().unwrap();
        let pml = pmd_lock(&pmd);
        let rejected = rejected.value.pmd_populate(&mm, &pml).unwrap_err();
        assert_eq!(rejected.error, Error::SlotOccupied);
        rejected
    };
    assert_eq!(mmu.dump(), before);
    rejected.value.pte_free();
    assert_eq!(mmu.free_frames(), free);
}

// ---------------------------------------------------------------------------------------------
// InvalidConfig
// ---------------------------------------------------------------------------------------------

fn config_error(frames: usize, va_limit: u64) -> Error {
    Mmu::new(MmuConfig { frames, va_limit }).unwrap_err()
}

#[test]
fn invalid_config() {
    for (frames, va_limit) in [
        (15, PMD_SIZE),
        (0, PMD_SIZE),
        ((1 << 26) + 1, PMD_SIZE),
        (16, 0),
        (16, PMD_SIZE + PAGE_SIZE),
        (16, 3 * PMD_SIZE / 2),
        (16, VA_LIMIT_MAX + PMD_SIZE),
    ] {
        let err = config_error(frames, va_limit);
        assert!(
            matches!(err, Error::InvalidConfig { reason } if !reason.is_empty()),
            "frames {frames}, va_limit {va_limit:#x}: {err:?}"
        );
    }
    // The edges that are valid.
    Mmu::new(MmuConfig {
        frames: 16,
        va_limit: PMD_SIZE,
    })
    .unwrap();
    Mmu::new(MmuConfig {
        frames: 16,
        va_limit: VA_LIMIT_MAX,
    })
    .unwrap();
}

#[test]
fn invalid_config_reasons_name_the_problem() {
    let Error::InvalidConfig { reason } = config_error(8, PMD_SIZE) else {
        panic!("expected InvalidConfig");
    };
    assert!(reason.contains("frames"), "{reason}");
    let Error::InvalidConfig { reason } = config_error(64, 12345) else {
        panic!("expected InvalidConfig");
    };
    assert!(reason.contains("va_limit"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------------------------

#[test]
fn display_is_meaningful() {
    let mmu = populated();
    let cases: Vec<(Error, Vec<String>)> = vec![
        (
            mmu.unmap_page(0x7000).unwrap_err(),
            vec!["0x7000".into(), "not mapped".into()],
        ),
        (
            mmu.map_page(0x1000).unwrap_err(),
            vec!["0x1000".into(), "already".into()],
        ),
        (
            mmu.map_page(0x1001).unwrap_err(),
            vec!["0x1001".into(), "0x1000".into(), "align".into()],
        ),
        (
            mmu.map_page(NON_CANONICAL).unwrap_err(),
            vec!["0x800000000000".into(), "canonical".into()],
        ),
        (
            mmu.map_page(0x80_0000).unwrap_err(),
            vec!["0x800000".into(), "outside".into()],
        ),
        (
            mmu.map_page(2 * PMD_SIZE + 0x3000).unwrap_err(),
            vec!["0x403000".into(), "huge".into()],
        ),
        (
            mmu.map_huge(0).unwrap_err(),
            vec!["0x0".into(), "PTE table".into()],
        ),
        (
            tiny().map_huge(0).unwrap_err(),
            vec!["512".into(), "11".into(), "frames".into()],
        ),
        (Error::WrongMmu, vec!["different MMU".into()]),
        (
            config_error(1, PMD_SIZE),
            vec!["invalid configuration".into()],
        ),
    ];
    for (err, needles) in cases {
        let text = err.to_string();
        assert!(!text.is_empty());
        for needle in needles {
            assert!(
                text.contains(&needle),
                "{err:?} displays as {text:?}, missing {needle:?}"
            );
        }
    }
    for nomap in [
        NoMap::None,
        NoMap::Huge,
        NoMap::Migration,
        NoMap::NotPresent,
        NoMap::Bad,
    ] {
        assert!(!nomap.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// NoMap reasons
// ---------------------------------------------------------------------------------------------

#[test]
fn nomap_none_and_huge() {
    let mmu = populated();
    let before = mmu.dump();
    {
        let mm = mmu.mmap_read_lock();
        // Region 1: upper levels exist (shared with region 0), the pmd is none.
        let none = mm.pmd_offset(PMD_SIZE).unwrap().unwrap();
        assert_eq!(pte_offset_map(&none, PMD_SIZE).unwrap_err(), NoMap::None);
        assert_eq!(
            pte_offset_map_lock(&none, PMD_SIZE).unwrap_err(),
            NoMap::None
        );
        // Region 2: a huge leaf.
        let huge = mm.pmd_offset(2 * PMD_SIZE).unwrap().unwrap();
        assert_eq!(
            pte_offset_map(&huge, 2 * PMD_SIZE).unwrap_err(),
            NoMap::Huge
        );
        assert_eq!(
            pte_offset_map_lock(&huge, 2 * PMD_SIZE).unwrap_err(),
            NoMap::Huge
        );
        // The same through a lockless copy.
        let g = mmu.rcu_read_lock();
        let copy = mmu.pmd_copy_lockless(&g, PMD_SIZE).unwrap().unwrap();
        assert_eq!(pte_offset_map(&copy, PMD_SIZE).unwrap_err(), NoMap::None);
        let copy = mmu.pmd_copy_lockless(&g, 2 * PMD_SIZE).unwrap().unwrap();
        assert_eq!(
            pte_offset_map(&copy, 2 * PMD_SIZE).unwrap_err(),
            NoMap::Huge
        );
        // Region 0 maps fine.
        let table = mm.pmd_offset(0).unwrap().unwrap();
        assert!(pte_offset_map(&table, 0x1000).unwrap().pte().is_present());
    }
    assert_eq!(mmu.dump(), before);
    assert_eq!(mmu.audit().violations(), 0);
}
