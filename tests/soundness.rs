//! What safe code cannot do, checked at run time: each test is a misuse that used to break the
//! page-table protocol (or panic) through safe calls only, now refused with a typed error that
//! changes nothing, with the audit armed.
//!
//! The misuses the types refuse are compile-fail cases in `tests/ui/`:
//!
//! | class | what | where |
//! |---|---|---|
//! | 1. `Attached` means installed until unlocked | an `Attached` lock alive across `pmd_clear_exclusive` or `detach_range` | ui 33, 34 |
//! | 2. exclusive tokens are the holder's | `&Exclusive` or `&MmapWriteGuard` shared with a thread | ui 35, 36 |
//! | 3. installs only under the mmap or VMA lock (I7) | `pmd_populate` under the rmap lock | ui 37; [`a_vma_lock_installs_only_inside_its_vma`] |
//! | 4. MMU helpers keep the backend contract | `inject_pmd`, `put_page` are `unsafe` | ui 38; the class-4 tests here |
//! | 5. no reachable panics | a slot of no MMU; the backend's slot functions | ui 39; the class-5 tests here |
//! | 6. an owned table outlives its locks | a helper returning a retracted table | ui pass 06; [`a_retracted_table_outlives_its_locks`] |

mod common;

use common::assert_clean;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
use typed_pgtable::mmu::{FrameKind, Mmu, MmuConfig, PAGE_SIZE, PMD_SIZE, PmdKind, Pte, VmaKind};
use typed_pgtable::provenance::{
    DetachedPmd, Retired, pmd_lock, pmdp_collapse_flush, pte_offset_map, pte_offset_map_lock,
};
use typed_pgtable::rcu::{EpochRcu, RcuDomain, tiny::TinyRcu};
use typed_pgtable::{Error, NoMap};

const A: u64 = 0x4000_0000;
const B: u64 = A + 4 * PMD_SIZE;

fn mmu(frames: usize) -> Mmu {
    Mmu::new(MmuConfig {
        frames,
        va_limit: 1 << 32,
    })
    .unwrap()
}

/// The frame of the PTE table that maps `va`.
fn table_pfn(mmu: &Mmu, va: u64) -> u64 {
    let mm = mmu.mmap_read_lock();
    match mm.pmd_offset(va).unwrap().unwrap().pmd_val().kind() {
        PmdKind::Table(t) => t,
        other => panic!("no PTE table at {va:#x}: {other:?}"),
    }
}

/// Writes `pte` at `va` through an `Attached` lock.
fn set_pte_locked(mmu: &Mmu, va: u64, pte: Pte) -> Result<(), Error> {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(va).unwrap().unwrap();
    let ptl = pte_offset_map_lock(&pmd, va).unwrap();
    ptl.set_pte(va, pte)
}

// ---------------------------------------------------------------------------------------------
// Class 3: installs need a lock that allows them, and covers the slot.

#[test]
fn a_vma_lock_installs_only_inside_its_vma() {
    let mmu = mmu(1024);
    mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.mmap(B, PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.map_page(A).unwrap();
    let before = mmu.dump();
    let mm = mmu.mmap_read_lock();
    let vma_a = mmu.lock_vma_under_rcu(A).unwrap();
    let pmd_b = mm.pmd_offset(B).unwrap().unwrap();
    let pml = pmd_lock(&pmd_b);
    // A's VMA lock does not keep B's VMA attached: B may be munmapped meanwhile.
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    let rejected = table.pmd_populate(&vma_a, &pml).unwrap_err();
    assert_eq!(rejected.error, Error::SlotNotCovered);
    drop(pml);
    drop(vma_a);
    drop(mm);
    assert_eq!(mmu.dump().entries, before.entries, "nothing was installed");
    rejected.value.pte_free();
    // Under B's own VMA lock the same install is allowed.
    let vma_b = mmu.lock_vma_under_rcu(B).unwrap();
    let pmd_b = vma_b.pmd_offset(B).unwrap().unwrap();
    let pml = pmd_lock(&pmd_b);
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    table
        .pmd_populate(&vma_b, &pml)
        .map_err(|r| r.error)
        .unwrap();
    drop(pml);
    drop(vma_b);
    assert_eq!(mmu.frame_kind(table_pfn(&mmu, B)), Some(FrameKind::Pte));
    assert_clean(&mmu);
}

#[test]
fn an_install_lock_of_another_mmu_is_refused() {
    let a = mmu(256);
    let b = mmu(256);
    a.map_page(A).unwrap();
    b.map_page(A).unwrap();
    let mm_a = a.mmap_read_lock();
    let mm_b = b.mmap_read_lock();
    let pmd = mm_a.pmd_offset(A + PMD_SIZE).unwrap().unwrap();
    let pml = pmd_lock(&pmd);
    let table = DetachedPmd::pte_alloc_one(&a).unwrap();
    let rejected = table.pmd_populate(&mm_b, &pml).unwrap_err();
    assert_eq!(rejected.error, Error::WrongMmu);
    rejected.value.pte_free();
    drop(pml);
    drop((mm_a, mm_b));
    assert_clean(&a);
    assert_clean(&b);
}

// ---------------------------------------------------------------------------------------------
// Class 4: a PTE maps only a data page in use, and holds its own reference to it.

#[test]
fn a_pte_cannot_map_a_page_table() {
    let mmu = mmu(1024);
    mmu.map_page(A).unwrap();
    mmu.map_page(B).unwrap();
    let table = table_pfn(&mmu, B);
    let before = mmu.dump();
    // Mapping B's live PTE table as a page of A: refused, nothing written.
    assert_eq!(
        set_pte_locked(&mmu, A + PAGE_SIZE, Pte::page(table)),
        Err(Error::NotADataPage { pfn: table })
    );
    assert_eq!(mmu.dump(), before);
    // So unmapping A frees no table behind B's walkers.
    assert_eq!(
        mmu.unmap_page(A + PAGE_SIZE),
        Err(Error::NotMapped {
            addr: A + PAGE_SIZE
        })
    );
    mmu.unmap_page(A).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(table), Some(FrameKind::Pte));
    assert!(mmu.translate(B).unwrap().is_some());
    // GUP-fast and try_get_page do not reference tables either.
    assert!(mmu.try_get_page(table).is_none());
    assert_clean(&mmu);
}

#[test]
fn a_pte_cannot_map_a_free_frame_a_frame_out_of_range_or_a_fake_zero_page() {
    let mmu = mmu(1024);
    mmu.map_page(A).unwrap();
    let data = mmu.map_page(A + PAGE_SIZE).unwrap();
    let free = (1..1024)
        .find(|&p| mmu.frame_kind(p) == Some(FrameKind::Free))
        .unwrap();
    let before = mmu.dump();
    for (pte, pfn) in [
        (Pte::page(free), free),
        (Pte::anon_page(free), free),
        (Pte::page(1 << 30), 1 << 30),
        (Pte::page(0), 0),
        // A special entry is the zero page's, never another page's.
        (Pte::special(data), data),
    ] {
        assert_eq!(
            set_pte_locked(&mmu, A + 2 * PAGE_SIZE, pte),
            Err(Error::NotADataPage { pfn }),
            "{pte:?}"
        );
        assert_eq!(mmu.dump(), before, "{pte:?} changed something");
    }
    // Non-present entries hold no page: always allowed.
    set_pte_locked(&mmu, A + 2 * PAGE_SIZE, Pte::migration(3)).unwrap();
    set_pte_locked(&mmu, A + 2 * PAGE_SIZE, Pte::none()).unwrap();
    assert_clean(&mmu);
}

#[test]
fn a_copied_pte_holds_its_own_reference() {
    let mmu = mmu(1024);
    let free0 = mmu.free_frames();
    let pfn = mmu.map_page(A).unwrap();
    let pte = {
        let guard = mmu.rcu_read_lock();
        let copy = mmu.pmd_copy_lockless(&guard, A).unwrap().unwrap();
        pte_offset_map(&copy, A).unwrap().pte()
    };
    // The same page mapped twice: two references.
    set_pte_locked(&mmu, A + PAGE_SIZE, pte).unwrap();
    assert_eq!(mmu.page_refs(pfn), 2);
    // Unmapping one mapping leaves the other valid ...
    mmu.unmap_page(A).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.page_refs(pfn), 1);
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Data));
    assert_eq!(mmu.translate(A + PAGE_SIZE).unwrap(), Some(pfn << 12));
    // ... and the second unmap frees the page exactly once.
    mmu.unmap_page(A + PAGE_SIZE).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Free));
    // Only the tables stay.
    assert_eq!(mmu.free_frames(), free0 - 3);
    assert_clean(&mmu);
}

#[test]
fn overwriting_a_pte_drops_the_old_pages_reference() {
    let mmu = mmu(1024);
    let old = mmu.map_page(A).unwrap();
    let new = mmu.alloc_data_frame().unwrap();
    set_pte_locked(&mmu, A, Pte::page(new.pfn())).unwrap();
    let new_pfn = new.pfn();
    drop(new);
    mmu.rcu_barrier();
    // The old page lost its only reference; the new one is held by the entry alone.
    assert_eq!(mmu.frame_kind(old), Some(FrameKind::Free));
    assert_eq!(mmu.page_refs(new_pfn), 1);
    assert_eq!(mmu.unmap_page(A), Ok(new_pfn));
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(new_pfn), Some(FrameKind::Free));
    assert_clean(&mmu);
}

#[test]
fn page_references_are_values() {
    let mmu = mmu(1024);
    let pfn = mmu.map_page(A).unwrap();
    let table = table_pfn(&mmu, A);
    // References exist only as `PageRef`s: of data pages in use, nothing else.
    assert!(mmu.try_get_page(table).is_none());
    assert!(mmu.try_get_page(1 << 40).is_none());
    let free = (1..1024)
        .find(|&p| mmu.frame_kind(p) == Some(FrameKind::Free))
        .unwrap();
    assert!(mmu.try_get_page(free).is_none());
    // A reference keeps the page after its mapping goes, and its drop frees it.
    let held = mmu.try_get_page(pfn).unwrap();
    mmu.unmap_page(A).unwrap();
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Data));
    drop(held);
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Free));
    // The fault-injection put (unsafe) cannot free a table either.
    // SAFETY: a put of a frame that holds no reference: refused, nothing changes.
    assert!(!unsafe { mmu.put_page(table) });
    assert_eq!(mmu.frame_kind(table), Some(FrameKind::Pte));
    assert_clean(&mmu);
}

#[test]
fn deposits_hang_only_on_huge_pmds_one_each() {
    let mmu = mmu(2048);
    mmu.map_page(A).unwrap();
    mmu.map_huge(A + PMD_SIZE).unwrap();
    let before = mmu.dump();
    let mm = mmu.mmap_read_lock();
    // A slot that holds a PTE table: the deposit would be stranded.
    let pml = pmd_lock(&mm.pmd_offset(A).unwrap().unwrap());
    let r = DetachedPmd::pte_alloc_one(&mmu)
        .unwrap()
        .pgtable_trans_huge_deposit(&pml)
        .unwrap_err();
    assert!(
        matches!(r.error, Error::TableInTheWay { .. }),
        "{:?}",
        r.error
    );
    r.value.pte_free();
    drop(pml);
    // An empty slot: nothing to hang it on.
    let pml = pmd_lock(&mm.pmd_offset(A + 2 * PMD_SIZE).unwrap().unwrap());
    let r = DetachedPmd::pte_alloc_one(&mmu)
        .unwrap()
        .pgtable_trans_huge_deposit(&pml)
        .unwrap_err();
    assert!(matches!(r.error, Error::NotMapped { .. }), "{:?}", r.error);
    r.value.pte_free();
    drop(pml);
    // A huge pmd that has its deposit already.
    let pml = pmd_lock(&mm.pmd_offset(A + PMD_SIZE).unwrap().unwrap());
    let r = DetachedPmd::pte_alloc_one(&mmu)
        .unwrap()
        .pgtable_trans_huge_deposit(&pml)
        .unwrap_err();
    assert_eq!(r.error, Error::SlotOccupied);
    r.value.pte_free();
    drop(pml);
    drop(mm);
    assert_eq!(mmu.dump(), before);
    assert_clean(&mmu);
}

// ---------------------------------------------------------------------------------------------
// Class 5: bad input and odd orderings give errors, never panics.

#[test]
fn huge_counts_are_not_capacities() {
    let mmu = mmu(256);
    mmu.map_page(A).unwrap();
    let pins = mmu.gup_fast(A, usize::MAX).unwrap();
    assert_eq!(pins.len(), 1);
    drop(pins);
    assert!(mmu.map_pages(A, usize::MAX).is_err());
    assert!(mmu.gup_fast(!0xfff, usize::MAX).is_err());
    assert_clean(&mmu);
}

#[test]
fn an_arena_too_big_for_the_machine_is_an_error() {
    // 2^26 frames need 256 GiB for the arena alone: an error on smaller machines, never an
    // allocation failure that aborts the process.
    match Mmu::new(MmuConfig {
        frames: 1 << 26,
        va_limit: 1 << 30,
    }) {
        Ok(_) | Err(Error::InvalidConfig { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn rcu_callbacks_may_open_read_sections() {
    // A pin can run deferred callbacks; a callback that opens a section (of a domain this
    // thread has not used yet, or of the same one) must not find the thread's handle cache
    // borrowed.
    let a = Arc::new(EpochRcu::new());
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..64 {
        let (a2, ran2) = (a.clone(), ran.clone());
        a.call_rcu(Box::new(move || {
            let other = EpochRcu::new();
            drop(other.read_lock());
            drop(a2.read_lock());
            ran2.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for _ in 0..100_000 {
        drop(a.read_lock());
    }
    a.rcu_barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 64);
    // An MMU used from inside a callback (its own domain is new to the thread).
    let b = EpochRcu::new();
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    b.call_rcu(Box::new(move || {
        let m = mmu(64);
        m.map_page(A).unwrap();
        assert!(m.translate(A).unwrap().is_some());
        d2.fetch_add(1, Ordering::SeqCst);
    }));
    b.rcu_barrier();
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn tiny_rcu_slots_out_of_range_are_refused() {
    let rcu = TinyRcu::new();
    assert!(!rcu.read_lock(usize::MAX));
    assert!(!rcu.read_unlock(4));
    assert!(rcu.read_lock(0));
    assert!(rcu.read_unlock(0));
    rcu.synchronize();
}

// ---------------------------------------------------------------------------------------------
// Class 6: an owned table lives as long as the MMU, not as long as its locks.

/// The helper of the issue: retract a table and hand it to the caller.
fn retract(mmu: &Mmu, va: u64) -> Option<DetachedPmd<'_, Mmu, Retired>> {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(va).ok()??;
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_lock(&pmd, va).ok()?;
    pmdp_collapse_flush(&pml, ptl).ok()
}

#[test]
fn a_retracted_table_outlives_its_locks() {
    let mmu = mmu(1024);
    let pfn = mmu.map_page(A).unwrap();
    let table = retract(&mmu, A).unwrap();
    assert_eq!(mmu.translate(A).unwrap(), None);
    assert_eq!(
        pte_offset_map(&table.pmd(), A).unwrap().pte().pfn(),
        Some(pfn)
    );
    // A lockless walker that copied the pmd before the retract may still be inside it: the
    // only free is after a grace period, and the entry's page reference goes with the table.
    page_table_check_pte_clear_range(&mmu, A, &table.pmd());
    table.pte_free_defer();
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Data));
    mmu.rcu_barrier();
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Free));
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(A).unwrap().unwrap();
    assert_eq!(pte_offset_map(&pmd, A).err(), Some(NoMap::None));
    drop(mm);
    assert_eq!(mmu.audit().violations(), 0);
}

/// The same for a table cleared under exclusivity: owned for the MMU's lifetime, not the
/// token's or the mmap lock's.
fn clear_unmapped(mmu: &Mmu, va: u64) -> Option<DetachedPmd<'_, Mmu, Retired>> {
    let mut mm = mmu.mmap_write_lock();
    let mut excl = mm.detach_range(va, PMD_SIZE).ok()?;
    excl.zap();
    typed_pgtable::provenance::pmd_clear_exclusive(&mut excl, va).ok()
}

#[test]
fn a_table_cleared_under_exclusivity_outlives_the_token() {
    let mmu = mmu(1024);
    mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.map_page(A).unwrap();
    let table = clear_unmapped(&mmu, A).unwrap();
    assert!(pte_offset_map(&table.pmd(), A).unwrap().pte().is_none());
    table.pte_free_defer();
    assert_eq!(mmu.stats().anon_pages_lost, 0);
    assert_clean(&mmu);
}

// ---------------------------------------------------------------------------------------------
// Classes 1 and 2 at run time: `free_pgtables` never loses track of what it frees.

#[test]
fn free_pgtables_without_a_zap_drops_the_pages_of_what_it_frees() {
    let mmu = mmu(1024);
    mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
    let free0 = mmu.free_frames();
    let pfn = mmu.map_page(A).unwrap();
    {
        let mut mm = mmu.mmap_write_lock();
        let excl = mm.detach_range(A, PMD_SIZE).unwrap();
        // No zap first: the table still maps an anonymous page.
        assert_eq!(excl.free_pgtables(), 1);
    }
    mmu.rcu_barrier();
    // The page is counted lost and its reference dropped with the table: nothing leaks.
    assert_eq!(mmu.stats().anon_pages_lost, 1);
    assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Free));
    assert_eq!(mmu.free_frames(), free0 - 2, "only the upper tables stay");
    assert_clean(&mmu);
}

#[test]
fn read_sections_during_thread_teardown_do_not_panic() {
    // A thread-local made before the thread's first read section is destroyed after the RCU
    // backend's own thread-local: its destructor still opens sections (a `translate`).
    struct Late(Arc<Mmu>);
    impl Drop for Late {
        fn drop(&mut self) {
            assert!(self.0.translate(A).unwrap().is_some());
        }
    }
    std::thread_local! {
        static LATE: std::cell::RefCell<Option<Late>> = const { std::cell::RefCell::new(None) };
    }
    let shared = Arc::new(mmu(64));
    shared.map_page(A).unwrap();
    let m = shared.clone();
    std::thread::spawn(move || {
        LATE.with(|l| *l.borrow_mut() = Some(Late(m.clone())));
        assert!(m.translate(A).unwrap().is_some());
    })
    .join()
    .expect("the thread ended without a panic");
    assert_clean(&shared);
}
