//! The use-after-free audit: it must fire when the `unsafe` unprotected path reads a table that
//! was retracted and freed, and stay silent when the same scenario goes through the typed API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use typed_pgtable::mmu::{FrameKind, Mmu, MmuConfig, POISON, PmdKind};
use typed_pgtable::provenance::{pte_offset_map, pte_offset_map_unprotected};

const VA: u64 = 0x40_3000;

fn mmu_with_page() -> (Mmu, u64) {
    // Miri keeps metadata for every byte of the arena: keep it small there.
    let frames = if cfg!(miri) { 64 } else { 4096 };
    let mmu = Mmu::new(MmuConfig {
        frames,
        va_limit: 1 << 30,
    })
    .unwrap();
    let pfn = mmu.map_page(VA).unwrap();
    (mmu, pfn)
}

fn table_pfn(mmu: &Mmu) -> u64 {
    let mm = mmu.mmap_read_lock();
    match mm.pmd_offset(VA).unwrap().unwrap().pmd_val().kind() {
        PmdKind::Table(pfn) => pfn,
        other => panic!("expected a PTE table, found {other:?}"),
    }
}

#[test]
fn unprotected_read_of_freed_table_is_reported() {
    let (mmu, _) = mmu_with_page();
    let table = table_pfn(&mmu);
    // A pmd value kept past its protection, as the buggy callers in the kernel's history did.
    let stale = mmu.pmd_read_unprotected(VA).unwrap().unwrap();

    assert_eq!(mmu.retract_pte_table(VA).unwrap(), 1);
    mmu.rcu_barrier();
    assert_eq!(
        mmu.frame_kind(table),
        Some(FrameKind::Free),
        "table freed after the grace period"
    );
    assert_eq!(mmu.audit().violations(), 0);

    // SAFETY: deliberately broken: the table behind `stale` has been freed. The arena keeps the
    // memory, so this is a logical use-after-free that the audit must catch.
    let map = unsafe { pte_offset_map_unprotected(&stale, VA) }
        .expect("the stale value still names a table");
    let pte = map.ptep_get(VA);
    assert_eq!(pte.raw(), POISON, "a freed table is poisoned");
    assert!(pte.is_bad());

    let n = mmu.audit().violations();
    assert!(
        n >= 3,
        "map (generation and frame kind) and read all flagged, got {n}"
    );
    let report = mmu.audit().report();
    let v = report[0];
    assert_eq!(v.pfn, table);
    assert_eq!(v.op, "pte_offset_map_unprotected");
    assert_eq!(v.access, "map");
    assert_eq!(v.found_gen, v.expected_gen + 1);
    let accesses: Vec<&str> = report.iter().map(|v| v.access).collect();
    assert!(
        accesses.contains(&"map of a non-table frame"),
        "{accesses:?}"
    );
    assert!(accesses.contains(&"read"), "{accesses:?}");
    assert!(v.to_string().contains("use-after-free"));
}

#[test]
fn unprotected_read_of_reused_table_is_reported() {
    let (mmu, _) = mmu_with_page();
    let table = table_pfn(&mmu);
    let stale = mmu.pmd_read_unprotected(VA).unwrap().unwrap();
    mmu.retract_pte_table(VA).unwrap();
    mmu.rcu_barrier();
    // Reuse: fault pages until the freed frame comes back as something else.
    let mut va = 0x1000_0000;
    while mmu.frame_kind(table) == Some(FrameKind::Free) {
        mmu.map_page(va).unwrap();
        va += 0x20_0000;
    }
    // SAFETY: deliberately broken, see above; the frame now belongs to another table or page.
    let map = unsafe { pte_offset_map_unprotected(&stale, VA) }.unwrap();
    let _ = map.ptep_get(VA);
    assert!(mmu.audit().violations() >= 2);
    assert!(mmu.audit().report().iter().all(|v| v.pfn == table));
}

#[test]
fn same_scenario_through_typed_api_is_clean() {
    let (mmu, pfn) = mmu_with_page();
    let mmu = Arc::new(mmu);
    let table = table_pfn(&mmu);

    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    let map = pte_offset_map(&copy, VA).unwrap();
    assert_eq!(map.ptep_get(VA).pfn(), Some(pfn));

    // Another thread retracts the table and waits for its free.
    let freed = Arc::new(AtomicBool::new(false));
    let remover = {
        let mmu = mmu.clone();
        let freed = freed.clone();
        std::thread::spawn(move || {
            assert_eq!(mmu.retract_pte_table(VA).unwrap(), 1);
            mmu.rcu_barrier();
            freed.store(true, Ordering::Release);
        })
    };
    // While the map lives the table is detached but not freed: reads still see the old entry.
    // Keep reading until the remover has detached the table, and for a while after: the
    // reads stay valid and nothing is freed while the map (and its read section) lives.
    let mut after = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while copy.still_installed() || after < 200 {
        assert!(
            std::time::Instant::now() < deadline && !remover.is_finished()
                || !copy.still_installed(),
            "the remover never detached the table"
        );
        assert_eq!(map.ptep_get(VA).pfn(), Some(pfn));
        assert!(
            !freed.load(Ordering::Acquire),
            "freed under a live read section"
        );
        if !copy.still_installed() {
            after += 1;
        }
        std::thread::yield_now();
    }
    assert_eq!(mmu.frame_kind(table), Some(FrameKind::Pte));
    drop(map);
    drop(guard);
    remover.join().unwrap();
    assert!(freed.load(Ordering::Acquire));
    assert_eq!(mmu.frame_kind(table), Some(FrameKind::Free));
    assert_eq!(mmu.audit().violations(), 0);
    assert!(mmu.audit().checks() > 0, "the audit did look");
    assert_eq!(mmu.translate(VA).unwrap(), None);
}
