//! The provenance API on the heap backend: real tables, real frees, its own RCU and locks.
//!
//! Small enough for Miri (`MIRIFLAGS=-Zmiri-tree-borrows cargo +nightly miri test --features
//! heap --test heap_backend`), where a walker that touches a freed table is undefined
//! behaviour, not a poisoned value.
#![cfg(feature = "heap")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use typed_pgtable::NoMap;
use typed_pgtable::heap::desc::{
    Prot, Pte, pfn_pte, pte_mkold, pte_mkyoung, pte_none, pte_pfn, pte_valid, pte_young,
};
use typed_pgtable::heap::{HEAP_SPAN, HeapPgtable, HeapPmd};
use typed_pgtable::provenance::PgtableError;
use typed_pgtable::provenance::{
    CopiedUnderRcu, DetachedPmd, PgtableBackend, PmdRef, PteMap, pmd_clear_exclusive, pmd_lock,
    pmd_trylock, pmdp_collapse_flush, pmdp_get_lockless, pte_offset_map, pte_offset_map_lock,
};
use typed_pgtable::rcu::RcuDomain;

const ADDR: u64 = 0x40_0000; // slot 2
const ITERS: usize = if cfg!(miri) { 150 } else { 2000 };

fn page(pfn: u64) -> Pte {
    pfn_pte(pfn, Prot::USER)
}

/// Allocates a table, writes `page(pfn)` at indices `0..n` of the table for `addr`, and
/// installs it under the mm and PMD locks.
fn install(heap: &HeapPgtable, addr: u64, pfn: u64, n: usize) {
    let mut table = DetachedPmd::pte_alloc_one(heap).unwrap();
    let map = table.pte_offset_map_mut(addr);
    for i in 0..n {
        map.set_pte_index(i, page(pfn)).unwrap();
    }
    drop(map);
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(addr).unwrap();
    table
        .pmd_populate(&mm, &pmd_lock(&pmd))
        .map_err(|r| r.error)
        .unwrap();
}

/// Takes the table for `addr` out of its slot under both locks and frees it after a grace
/// period; `false` if the slot held none.
fn retract(heap: &HeapPgtable, addr: u64) -> bool {
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(addr).unwrap();
    let pml = pmd_lock(&pmd);
    let Ok(ptl) = pte_offset_map_lock(&pmd, addr) else {
        return false;
    };
    let detached = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
    detached.pte_free_defer();
    true
}

/// Installs a table at `ADDR` mapping `pfn` and runs `walk` as a lockless walker inside it: in
/// an RCU read section, with the walker's copy of the pmd and its map of the table. The map
/// is dropped, and the section ends, when `walk` returns.
fn inside_a_lockless_walk(
    heap: &HeapPgtable,
    pfn: u64,
    walk: impl for<'g> FnOnce(
        &PmdRef<'g, 'g, HeapPgtable, CopiedUnderRcu<'g>>,
        &PteMap<'g, HeapPgtable>,
    ),
) {
    install(heap, ADDR, pfn, 1);
    let guard = heap.rcu().read_lock();
    let copy = heap.pmd_copy_lockless(&guard, ADDR).unwrap().unwrap();
    let map = pte_offset_map(&copy, ADDR).unwrap();
    walk(&copy, &map);
    drop(map);
    drop(guard);
}

#[test]
fn lockless_walk_of_a_populated_table() {
    let heap = HeapPgtable::new().unwrap();
    install(&heap, ADDR, 0x42, 4);
    let guard = heap.rcu().read_lock();

    // Through a locked walk's slot, then without any lock.
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(ADDR).unwrap();
    let copy = pmdp_get_lockless(&pmd, &guard).unwrap();
    assert!(copy.still_installed());
    let map = pte_offset_map(&copy, ADDR + 0x3000).unwrap();
    assert_eq!(pte_pfn(map.pte()), 0x42);
    assert!(pte_none(map.ptep_get_index(4)));
    assert_eq!(map.entries().filter(|p| pte_valid(*p)).count(), 4);
    drop(map);
    drop(mm);

    let copy = heap.pmd_copy_lockless(&guard, ADDR).unwrap().unwrap();
    let table = heap.pmd_table(&copy.pmd_val()).unwrap();
    assert_eq!(
        copy.pmd_val().bits(),
        table.paddr() | 0b11,
        "arm64 table descriptor"
    );
    assert_eq!(table.paddr() % 4096, 0);
    assert_eq!(pte_pfn(pte_offset_map(&copy, ADDR).unwrap().pte()), 0x42);

    let empty = heap.pmd_copy_lockless(&guard, 0).unwrap().unwrap();
    assert_eq!(pte_offset_map(&empty, 0).err(), Some(NoMap::None));
    assert!(heap.pmd_copy_lockless(&guard, HEAP_SPAN).unwrap().is_none());
    assert!(heap.pmd_slot(HEAP_SPAN).is_none());
    assert_eq!(heap.tables_live(), 1);
}

#[test]
fn locked_walk_writes_and_clears() {
    let heap = HeapPgtable::new().unwrap();
    install(&heap, ADDR, 7, 2);
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(ADDR).unwrap();
    {
        let pte = pte_offset_map_lock(&pmd, ADDR).unwrap();
        assert!(pte_young(pte.pte()));
        pte.set_pte(ADDR, pte_mkold(pte.pte())).unwrap();
        pte.set_pte(ADDR + 0x5000, page(9)).unwrap();
        assert_eq!(pte.ptep_get_and_clear(ADDR + 0x1000), page(7));
    }
    let map = pte_offset_map(&pmd, ADDR).unwrap();
    assert!(!pte_young(map.pte()));
    assert_eq!(map.ptep_get(ADDR + 0x5000), page(9));
    assert!(pte_none(map.ptep_get(ADDR + 0x1000)));
    drop(map);

    // The PMD lock excludes: trylock fails while it is held.
    let pml = pmd_lock(&pmd);
    assert!(pmd_trylock(&pmd).is_none());
    drop(pml);
    assert!(pmd_trylock(&pmd).is_some());
}

/// The table a lockless walker is inside is retracted and queued for freeing; it stays
/// readable until the walker's section ends, then it is really freed.
#[test]
fn retract_frees_only_after_the_grace_period() {
    let heap = HeapPgtable::new().unwrap();
    inside_a_lockless_walk(&heap, 0x99, |copy, map| {
        assert!(retract(&heap, ADDR));
        assert!(!copy.still_installed());
        let mm = heap.mmap_read_lock();
        assert_eq!(
            pte_offset_map(&mm.pmd_offset(ADDR).unwrap(), ADDR).err(),
            Some(NoMap::None)
        );
        drop(mm);
        assert_eq!(heap.rcu().quiescent(), 0, "the walker's section is open");
        // Under a free-at-once backend this read is a use-after-free.
        assert_eq!(pte_pfn(map.pte()), 0x99);
        assert_eq!(heap.tables_live(), 1);
    });
    assert_eq!(heap.rcu().quiescent(), 1);
    assert_eq!(heap.tables_live(), 0);
}

/// `pte_offset_map_lock` on a slot emptied meanwhile finds nothing; a refilled slot is
/// found again.
#[test]
fn retract_then_refill_and_rcu_barrier() {
    let heap = HeapPgtable::new().unwrap();
    for round in 0..3 {
        install(&heap, ADDR, round, 1);
        assert!(retract(&heap, ADDR));
        assert!(!retract(&heap, ADDR), "nothing left to retract");
    }
    install(&heap, ADDR, 3, 1);
    heap.rcu().rcu_barrier();
    assert_eq!(heap.tables_live(), 1);
    let mm = heap.mmap_read_lock();
    let pte = pte_offset_map_lock(&mm.pmd_offset(ADDR).unwrap(), ADDR).unwrap();
    assert_eq!(pte_pfn(pte.pte()), 3);
}

/// A 2 MiB block with a deposited table is split into the 512 PTEs of the same pages.
#[test]
fn split_a_block_into_its_deposited_table() {
    let heap = HeapPgtable::new().unwrap();
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(ADDR).unwrap();
    let block_pfn = 0x4_0000;
    {
        let pml = pmd_lock(&pmd);
        heap.set_pmd_huge(&pml, block_pfn, Prot::USER).unwrap();
        DetachedPmd::pte_alloc_one(&heap)
            .unwrap()
            .pgtable_trans_huge_deposit(&pml)
            .map_err(|r| r.error)
            .unwrap();
        let again = DetachedPmd::pte_alloc_one(&heap).unwrap();
        let refused = again.pgtable_trans_huge_deposit(&pml).unwrap_err();
        assert_eq!(
            refused.error,
            PgtableError::SlotOccupied,
            "one deposit per slot"
        );
        refused.value.pte_free();
    }
    assert_eq!(pte_offset_map(&pmd, ADDR).err(), Some(NoMap::Huge));

    // The split, under the PMD lock: withdraw, fill through the owned map, clear the block,
    // install the table.
    {
        let pml = pmd_lock(&pmd);
        let mut table = DetachedPmd::pgtable_trans_huge_withdraw(&pml).unwrap();
        assert!(DetachedPmd::pgtable_trans_huge_withdraw(&pml).is_none());
        let map = table.pte_offset_map_mut(ADDR);
        for i in 0..512 {
            map.set_pte_index(i, page(block_pfn + i as u64)).unwrap();
        }
        drop(map);
        let old = heap.pmdp_huge_get_and_clear(&pml).unwrap();
        assert_eq!(typed_pgtable::heap::desc::pmd_pfn(old), block_pfn);
        table.pmd_populate(&mm, &pml).map_err(|r| r.error).unwrap();
        assert_eq!(
            heap.pmdp_huge_get_and_clear(&pml),
            Err(PgtableError::TableInTheWay)
        );
    }
    let map = pte_offset_map(&pmd, ADDR + 0x7000).unwrap();
    assert_eq!(pte_pfn(map.pte()), block_pfn + 7);
    assert_eq!(pte_pfn(map.ptep_get_index(511)), block_pfn + 511);
    drop(map);
    assert_eq!(heap.tables_live(), 1);
}

/// Under the exclusive mm lock a slot is cleared without the PTE lock; lockless walkers may
/// still be inside, so the table is freed after a grace period.
#[test]
fn exclusive_clear_defers_the_free() {
    let heap = HeapPgtable::new().unwrap();
    inside_a_lockless_walk(&heap, 5, |_, map| {
        {
            let mut excl = heap.mmap_write_lock();
            let own = excl.pmd_offset(ADDR).unwrap();
            assert!(pte_offset_map(&own, ADDR).is_ok());
            let detached = pmd_clear_exclusive(&mut excl, ADDR).unwrap();
            assert_eq!(
                pmd_clear_exclusive(&mut excl, ADDR).err(),
                Some(PgtableError::NoTable(NoMap::None))
            );
            assert_eq!(
                pmd_clear_exclusive(&mut excl, HEAP_SPAN).err(),
                Some(PgtableError::NoSlot { addr: HEAP_SPAN })
            );
            detached.pte_free_defer();
        }
        assert_eq!(pte_pfn(map.pte()), 5);
    });
    heap.rcu().rcu_barrier();
    assert_eq!(heap.tables_live(), 0);
}

#[test]
fn errors_and_identity() {
    let heap = HeapPgtable::new().unwrap();
    let other = HeapPgtable::new().unwrap();
    let foreign = other.rcu().read_lock();
    assert_eq!(
        heap.pmd_copy_lockless(&foreign, 0).err(),
        Some(PgtableError::WrongBackend)
    );
    let mm = heap.mmap_read_lock();
    let pmd = mm.pmd_offset(ADDR).unwrap();
    assert_eq!(
        pmdp_get_lockless(&pmd, &foreign).err(),
        Some(PgtableError::WrongBackend)
    );
    drop(foreign);

    // Another address space's mm lock does not allow installing here.
    let other_mm = other.mmap_read_lock();
    let table = DetachedPmd::pte_alloc_one(&heap).unwrap();
    let refused = table.pmd_populate(&other_mm, &pmd_lock(&pmd)).unwrap_err();
    assert_eq!(refused.error, PgtableError::WrongBackend);
    let other_pmd = other_mm.pmd_offset(ADDR).unwrap();
    assert_eq!(
        heap.set_pmd_huge(&pmd_lock(&other_pmd), 0, Prot::USER),
        Err(PgtableError::WrongBackend)
    );

    let pml = pmd_lock(&pmd);
    // A fresh table cannot be deposited where there is no block.
    let refused = refused.value.pgtable_trans_huge_deposit(&pml).unwrap_err();
    assert_eq!(refused.error, PgtableError::NotHuge);
    refused.value.pte_free();
    assert_eq!(
        heap.set_pmd_huge(&pml, 1, Prot::USER),
        Err(PgtableError::Misaligned {
            addr: 0x1000,
            align: 0x20_0000
        })
    );
    assert_eq!(
        heap.pmdp_huge_get_and_clear(&pml),
        Err(PgtableError::NotHuge)
    );
    heap.set_pmd_huge(&pml, 0x200, Prot::USER).unwrap();
    assert_eq!(
        heap.set_pmd_huge(&pml, 0x200, Prot::USER),
        Err(PgtableError::SlotOccupied)
    );
    // A populate over a block is refused, and the table comes back.
    let table = DetachedPmd::pte_alloc_one(&heap).unwrap();
    let refused = table.pmd_populate(&mm, &pml).unwrap_err();
    assert_eq!(refused.error, PgtableError::SlotOccupied);
    refused.value.pte_free();
    drop(pml);
    assert_eq!(heap.tables_live(), 0);

    // Leaf values never name a table; table bits without a table are refused.
    assert!(HeapPmd::from_leaf_bits(0x7003).is_none());
    let bad = HeapPmd::from_leaf_bits(0xdead_0000).unwrap();
    assert_eq!(heap.pmd_table(&bad).err(), Some(NoMap::NotPresent));
}

/// Dropping the address space frees installed, deposited and retired tables (Miri's leak
/// check sees any that is not).
#[test]
fn drop_frees_every_table() {
    let heap = HeapPgtable::new().unwrap();
    install(&heap, 0, 1, 1);
    install(&heap, ADDR, 2, 1);
    {
        let mm = heap.mmap_read_lock();
        let pmd = mm.pmd_offset(0x80_0000).unwrap();
        let pml = pmd_lock(&pmd);
        heap.set_pmd_huge(&pml, 0x400, Prot::USER).unwrap();
        DetachedPmd::pte_alloc_one(&heap)
            .unwrap()
            .pgtable_trans_huge_deposit(&pml)
            .map_err(|r| r.error)
            .unwrap();
    }
    assert!(retract(&heap, 0));
    // A dropped detached table falls back to a deferred free.
    drop(DetachedPmd::pte_alloc_one(&heap).unwrap());
    assert_eq!(heap.tables_live(), 4);
    drop(heap);
}

/// A remover retracts and refills the slot while lockless walkers (GUP-fast) and locked
/// walkers (faults that touch the access flag) run. Every table a walker reaches must be a
/// live, fully filled one: under Miri a freed one is a use-after-free.
#[test]
fn remover_against_lockless_and_locked_walkers() {
    const FILLED: usize = 8;
    let heap = HeapPgtable::new().unwrap();
    let stop = AtomicBool::new(false);
    let (seen, locked) = (AtomicUsize::new(0), AtomicUsize::new(0));
    thread::scope(|s| {
        let lockless = s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let guard = heap.rcu().read_lock();
                let copy = heap.pmd_copy_lockless(&guard, ADDR).unwrap().unwrap();
                if let Ok(map) = pte_offset_map(&copy, ADDR) {
                    let round = pte_pfn(map.ptep_get_index(0));
                    for i in 0..FILLED {
                        let pte = map.ptep_get_index(i);
                        assert!(pte_valid(pte) && pte_pfn(pte) == round, "a torn table");
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                drop(guard);
                thread::yield_now();
            }
        });
        let locker = s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let mm = heap.mmap_read_lock();
                let pmd = mm.pmd_offset(ADDR).unwrap();
                if let Ok(pte) = pte_offset_map_lock(&pmd, ADDR + 0x1000) {
                    let old = pte.pte();
                    let new = if pte_young(old) {
                        pte_mkold(old)
                    } else {
                        pte_mkyoung(old)
                    };
                    pte.set_pte(ADDR + 0x1000, new).unwrap();
                    locked.fetch_add(1, Ordering::Relaxed);
                }
                drop(mm);
                thread::yield_now();
            }
        });
        for round in 0..ITERS as u64 {
            install(&heap, ADDR, round, FILLED);
            thread::yield_now();
            assert!(retract(&heap, ADDR));
            heap.rcu().quiescent();
        }
        stop.store(true, Ordering::Release);
        lockless.join().unwrap();
        locker.join().unwrap();
    });
    heap.rcu().rcu_barrier();
    assert_eq!(heap.tables_live(), 0);
    // Not asserted (scheduling decides), but shown with --nocapture.
    println!(
        "lockless walks inside a table: {}, locked writes: {}",
        seen.load(Ordering::Relaxed),
        locked.load(Ordering::Relaxed)
    );
}

/// Two lockless walkers hold sections across the remover's frees; `synchronize` and the
/// quiescent points free each table only once no walker can be inside.
#[test]
fn synchronize_against_walkers_holding_sections() {
    let heap = HeapPgtable::new().unwrap();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    let guard = heap.rcu().read_lock();
                    let mm = heap.mmap_read_lock();
                    let pmd = mm.pmd_offset(ADDR).unwrap();
                    let copy = pmdp_get_lockless(&pmd, &guard).unwrap();
                    if let Ok(map) = pte_offset_map(&copy, ADDR) {
                        thread::yield_now();
                        assert!(pte_valid(map.pte()));
                    }
                }
            });
        }
        for round in 0..ITERS as u64 / 2 {
            install(&heap, ADDR, round, 1);
            thread::yield_now();
            assert!(retract(&heap, ADDR));
            heap.rcu().synchronize();
            heap.rcu().quiescent();
        }
        stop.store(true, Ordering::Release);
    });
    heap.rcu().rcu_barrier();
    assert_eq!(heap.tables_live(), 0);
}
