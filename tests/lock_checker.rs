//! The lock checker: safe code that would deadlock is told so, within a bounded time, with the
//! rule named, instead of hanging.
//!
//! Each scenario runs on a thread of its own under a watchdog: the test fails if the scenario
//! neither returns nor panics within [`WATCHDOG`] (it would have hung), and checks the report:
//! an [`Error::LockViolation`] from calls that return a `Result`, a panic with the same message
//! from the bare lock calls (`pmd_lock`, `pte_offset_map_lock`, `rcu_barrier`).

#![cfg(feature = "lock-checker")]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use typed_pgtable::Error;
use typed_pgtable::mmu::{Mmu, MmuConfig, PAGE_SIZE, PMD_SIZE, VmaKind, lockdep};
use typed_pgtable::provenance::{pmd_lock, pmd_trylock, pte_offset_map, pte_offset_map_lock};

/// How long a scenario may take before the test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(20);

const A: u64 = 0x4000_0000;

fn mmu() -> Mmu {
    Mmu::new(MmuConfig {
        frames: 2048,
        va_limit: 1 << 32,
    })
    .unwrap()
}

/// Runs `scenario` under the watchdog and returns the panic message, if it panicked.
fn bounded(scenario: impl FnOnce() + Send + 'static) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(scenario)).err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let _ = tx.send(outcome);
    });
    rx.recv_timeout(WATCHDOG)
        .expect("the scenario hung: the lock checker did not report it")
}

/// Runs `scenario` on a fresh MMU under the watchdog: it must return, not panic. The
/// scenario itself checks the violations the calls return.
#[track_caller]
fn returns(scenario: impl FnOnce(Mmu) + Send + 'static) {
    assert_eq!(bounded(move || scenario(mmu())), None);
}

/// Runs `scenario` on a fresh MMU under the watchdog: a bare lock call in it must panic with
/// the checker's report of `rule`.
#[track_caller]
fn reports(rule: &str, scenario: impl FnOnce(Mmu) + Send + 'static) {
    assert_report(bounded(move || scenario(mmu())), rule);
}

/// Asserts the error is the checker's, naming `rule` and the caller's file as both sites.
#[track_caller]
fn assert_violation<T: std::fmt::Debug>(r: Result<T, Error>, rule: &str) {
    match r {
        Err(Error::LockViolation {
            rule: got,
            held_at,
            taken_at,
        }) => {
            assert!(got.contains(rule), "rule {got:?}, expected {rule:?}");
            assert!(held_at.file().ends_with("lock_checker.rs"), "{held_at}");
            assert!(!taken_at.file().is_empty());
        }
        other => panic!("expected a lock violation ({rule}), got {other:?}"),
    }
}

/// Asserts a panic message is the checker's report of `rule`.
#[track_caller]
fn assert_report(msg: Option<String>, rule: &str) {
    let msg = msg.expect("the scenario returned instead of reporting");
    assert!(msg.starts_with("lock checker:"), "{msg}");
    assert!(msg.contains(rule), "{msg}");
    assert!(
        msg.contains("lock_checker.rs"),
        "both sites are named: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// The four deadlocks of the issue.

#[test]
fn collapse_huge_page_inside_a_read_section_is_reported() {
    returns(|mmu| {
        mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
        mmu.map_page(A).unwrap();
        let guard = mmu.rcu_read_lock();
        // It takes the mmap lock for writing and waits for a grace period: both wait for us.
        assert_violation(mmu.collapse_huge_page(A), "inside an RCU read section");
        drop(guard);
        // Outside the section it works.
        mmu.collapse_huge_page(A).unwrap();
    });
}

#[test]
fn rcu_barrier_inside_a_read_section_is_reported() {
    reports("rcu_barrier inside an RCU read section", |mmu| {
        let _guard = mmu.rcu_read_lock();
        mmu.rcu_barrier();
    });
}

#[test]
fn map_page_inside_a_read_section_racing_a_collapse_is_reported() {
    let mmu = std::sync::Arc::new(mmu());
    mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
    mmu.map_page(A).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let collapser = {
        let (mmu, stop) = (mmu.clone(), stop.clone());
        thread::spawn(move || {
            common::until_stopped(&stop, || {
                let _ = mmu.collapse_huge_page(A);
                let _ = mmu.split_huge_pmd(A);
            });
        })
    };
    let m = mmu.clone();
    let msg = bounded(move || {
        for i in 1..200 {
            let guard = m.rcu_read_lock();
            assert_violation(m.map_page(A + i * PAGE_SIZE), "inside an RCU read section");
            drop(guard);
        }
    });
    stop.store(true, SeqCst);
    collapser.join().unwrap();
    assert_eq!(msg, None);
    common::assert_clean(&mmu);
}

#[test]
fn map_page_while_holding_the_tables_pte_lock_is_reported() {
    returns(|mmu| {
        mmu.map_page(A).unwrap();
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(A).unwrap().unwrap();
        let ptl = pte_offset_map_lock(&pmd, A).unwrap();
        // map_page would take the mmap lock again and then this very PTE lock. The first rule
        // it breaks: a PTE lock holds its map's RCU read section (as `pte_offset_map_lock`
        // does in the kernel), and the mmap lock sleeps.
        assert_violation(mmu.map_page(A + PAGE_SIZE), "inside an RCU read section");
        drop(ptl);
        drop(mm);
        // The same under a VMA lock: the mmap lock would come after a VMA and a PTE lock.
        mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
        let vma = mmu.lock_vma_under_rcu(A).unwrap();
        let pmd = vma.pmd_offset(A).unwrap().unwrap();
        let ptl = pte_offset_map_lock(&pmd, A).unwrap();
        assert_violation(mmu.map_page(A + PAGE_SIZE), "inside an RCU read section");
        drop(ptl);
        drop(vma);
        mmu.map_page(A + PAGE_SIZE).unwrap();
    });
}

#[test]
fn the_mmap_lock_taken_twice_is_reported() {
    returns(|mmu| {
        let _mm = mmu.mmap_read_lock();
        // A read lock taken again waits behind a writer queued in between.
        assert_violation(mmu.map_page(A), "recursive locking: the mmap lock");
    });
}

#[test]
fn the_same_pte_lock_taken_twice_is_reported() {
    reports("recursive locking: the PTE lock", |mmu| {
        mmu.map_page(A).unwrap();
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(A).unwrap().unwrap();
        let _first = pte_offset_map_lock(&pmd, A).unwrap();
        let _second = pte_offset_map_lock(&pmd, A + PAGE_SIZE);
    });
}

#[test]
fn a_leaked_read_section_at_drop_is_reported_not_waited_for() {
    let before = lockdep::leaked_sections_reported();
    returns(|mmu| {
        mmu.map_page(A).unwrap();
        {
            let mm = mmu.mmap_read_lock();
            let pmd = mm.pmd_offset(A).unwrap().unwrap();
            std::mem::forget(pte_offset_map(&pmd, A).unwrap());
        }
        drop(mmu);
    });
    assert_eq!(lockdep::leaked_sections_reported(), before + 1);
}

// ---------------------------------------------------------------------------------------------
// Lock order (I10), and what is allowed.

#[test]
fn a_blocking_pmd_lock_under_a_pte_lock_is_an_inversion() {
    let rule = "I10 lock order: a PMD lock taken (blocking) while holding a PTE lock";
    reports(rule, |mmu| {
        mmu.map_page(A).unwrap();
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(A).unwrap().unwrap();
        let ptl = pte_offset_map_lock(&pmd, A).unwrap();
        // PT_RECLAIM's trylock is the one allowed inversion ...
        let pml = pmd_trylock(&pmd).expect("free");
        drop(pml);
        // ... a blocking one can deadlock against a remover taking PMD then PTE lock.
        let _pml = pmd_lock(&pmd);
        drop(ptl);
    });
}

#[test]
fn the_mmap_lock_under_the_rmap_lock_is_an_inversion() {
    returns(|mmu| {
        mmu.mmap(A, PMD_SIZE, VmaKind::File).unwrap();
        let rmap = mmu.i_mmap_lock_read();
        assert_violation(
            mmu.map_page(A),
            "I10 lock order: the mmap lock taken while holding the rmap lock",
        );
        drop(rmap);
        mmu.map_page(A).unwrap();
    });
}

#[test]
fn munmap_while_holding_a_vma_lock_is_reported_not_a_hang() {
    returns(|mmu| {
        mmu.mmap(A, PMD_SIZE, VmaKind::Anon).unwrap();
        mmu.map_page(A).unwrap();
        let vma = mmu.lock_vma_under_rcu(A).unwrap();
        // munmap write-locks the VMA, which waits for this thread's own read lock.
        assert_violation(
            mmu.munmap(A, PMD_SIZE),
            "I10 lock order: the mmap lock taken while holding a VMA lock",
        );
        drop(vma);
        assert_eq!(mmu.munmap(A, PMD_SIZE), Ok(1));
    });
}

#[test]
fn the_kernel_orders_are_not_reported() {
    returns(|mmu| {
        mmu.mmap(A, 2 * PMD_SIZE, VmaKind::File).unwrap();
        mmu.map_page(A).unwrap();
        mmu.map_page(A + PMD_SIZE).unwrap();
        // mmap → VMA → rmap → PMD → PTE, spinlocks inside a read section, two PMD locks of
        // different tables, nested read sections.
        let mut mm = mmu.mmap_write_lock();
        {
            let vw = mm.vma_start_write(A).unwrap();
            let rmap = mmu.i_mmap_lock_read();
            let guard = mmu.rcu_read_lock();
            let inner = mmu.rcu_read_lock();
            let pmd = vw.pmd_offset(A).unwrap().unwrap();
            let pml = pmd_lock(&pmd);
            let ptl = pte_offset_map_lock(&pmd, A).unwrap();
            assert!(ptl.pte().is_present());
            drop((ptl, pml, inner, guard, rmap));
        }
        let excl = mm.detach_range(A, 2 * PMD_SIZE).unwrap();
        excl.zap();
        assert_eq!(excl.free_pgtables(), 2);
        drop(mm);
        // Every operation runs clean after all that.
        mmu.map_page(A + 7 * PAGE_SIZE).unwrap();
        common::assert_clean(&mmu);
    });
}
