//! A small kernel's mm code on the heap backend: what a kernel-like project writes once it
//! has implemented the provenance traits for its page tables (here `typed_pgtable::heap`: real
//! 4 KiB tables linked by arm64 descriptors, a QSBR RCU, spinlocks).
//!
//! Three pieces of mm code, each the kernel's, and none with `unsafe`:
//!
//! - a **fault** that fills a fresh PTE table and installs it under the PMD lock
//!   (`__pte_alloc` with the entries prepared);
//! - **`mkold`**, a locked walk that writes: clear the accessed bit of every page in a range
//!   under `pte_offset_map_lock` (what reclaim's aging does);
//! - **GUP-fast**, the lockless walk with its rechecks, racing **khugepaged's retract** on
//!   another thread, which detaches the table under both locks and frees it after a grace
//!   period.
//!
//! Run with `cargo run --example kernel_like --features heap`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use typed_pgtable::heap::HeapPgtable;
use typed_pgtable::heap::desc::{Prot, Pte, pfn_pte, pte_mkold, pte_pfn, pte_valid, pte_young};
use typed_pgtable::ops::{GupPin, gup_fast_one, populate_filled, retract_pte_table};
use typed_pgtable::provenance::{
    DetachedPmd, PgtableBackend, PgtableError, WalkLock, pmd_lock, pte_offset_map_lock,
};
use typed_pgtable::rcu::RcuDomain;

const PAGE_SIZE: u64 = 4096;
/// The 2 MiB range this example works on.
const BASE: u64 = 0x20_0000;
const PAGES: u64 = 16;

/// The fault: a fresh table holding `PAGES` young pages, installed under the mm lock (which
/// allows installs) and the PMD lock.
fn fault_in(mm: &HeapPgtable, first_pfn: u64) -> Result<(), PgtableError> {
    let lock = mm.mmap_read_lock();
    let pmd = lock
        .pmd_offset(BASE)
        .ok_or(PgtableError::NoSlot { addr: BASE })?;
    let pml = pmd_lock(&pmd);
    let table = DetachedPmd::pte_alloc_one(mm)?;
    let entries = (0..PAGES).map(|i| pfn_pte(first_pfn + i, Prot::USER));
    populate_filled(table, &lock, &pml, BASE, entries).map_err(|r| {
        // The table comes back on a refusal; it was never visible, so it is freed at once.
        r.value.pte_free();
        r.error
    })
}

/// `mkold` over the range: a locked walk that writes. The lock proves the table is still
/// installed (`pmd_same` under the PTE lock), which is what makes the writes land in it.
fn mkold_range(mm: &HeapPgtable) -> Result<u64, PgtableError> {
    let lock = mm.mmap_read_lock();
    let Some(pmd) = WalkLock::pmd_offset(&lock, BASE)? else {
        return Ok(0);
    };
    let Ok(ptl) = pte_offset_map_lock(&pmd, BASE) else {
        return Ok(0); // No table (retracted meanwhile): nothing to age.
    };
    let mut aged = 0;
    for i in 0..PAGES {
        let va = BASE + i * PAGE_SIZE;
        let pte = ptl.ptep_get(va);
        if pte_valid(pte) && pte_young(pte) {
            ptl.set_pte(va, pte_mkold(pte))?;
            aged += 1;
        }
    }
    Ok(aged)
}

/// GUP-fast's half for this kernel: a pin is the page frame number (a real kernel would take
/// a folio reference here and drop it in `unpin`).
#[derive(Default)]
struct Pins {
    taken: u64,
    backed_out: u64,
}

impl GupPin<HeapPgtable> for Pins {
    type Pin = u64;

    fn pin_pte(&mut self, pte: &Pte, _addr: u64) -> Option<u64> {
        pte_valid(*pte).then(|| {
            self.taken += 1;
            pte_pfn(*pte)
        })
    }

    fn unpin(&mut self, _pfn: u64) {
        self.backed_out += 1;
    }
}

/// GUP-fast over the range: stops at the first page it cannot pin, like the kernel.
fn gup_fast(mm: &HeapPgtable, pins: &mut Pins) -> Result<Vec<u64>, PgtableError> {
    let guard = mm.rcu().read_lock();
    let mut pinned = Vec::new();
    for i in 0..PAGES {
        match gup_fast_one(mm, &guard, BASE + i * PAGE_SIZE, pins)? {
            Some(pfn) => pinned.push(pfn),
            None => break,
        }
    }
    Ok(pinned)
}

/// khugepaged's retract of the range's table: under the mm lock, PMD lock, PTE lock with its
/// recheck, `pmdp_collapse_flush`, then `pte_free_defer`.
fn retract(mm: &HeapPgtable) -> Result<bool, PgtableError> {
    let lock = mm.mmap_read_lock();
    Ok(retract_pte_table(&lock, BASE, |_| true, |_| ())?.is_some())
}

fn main() -> Result<(), PgtableError> {
    let mm = HeapPgtable::new()?;
    fault_in(&mm, 0x1000)?;
    assert_eq!(mkold_range(&mm)?, PAGES);
    assert_eq!(mkold_range(&mm)?, 0, "already old");
    let mut pins = Pins::default();
    assert_eq!(gup_fast(&mm, &mut pins)?.len(), PAGES as usize);

    // GUP-fast against retract and refault on another thread.
    let stop = AtomicBool::new(false);
    let (rounds, full_pins) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        s.spawn(|| {
            for round in 0..500u64 {
                if retract(&mm).unwrap() {
                    mm.rcu().quiescent();
                }
                fault_in(&mm, 0x1000 + (round % 4) * PAGES).unwrap();
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            stop.store(true, Ordering::Release);
        });
        let mut pins = Pins::default();
        while !stop.load(Ordering::Acquire) {
            let pinned = gup_fast(&mm, &mut pins).unwrap();
            // Every pin is of a page some fault mapped, and all pins of one walk come from one
            // table (the pfns are consecutive).
            if let Some(&first) = pinned.first() {
                assert!((0x1000..0x1000 + 4 * PAGES).contains(&first));
                assert!(pinned.windows(2).all(|w| w[1] == w[0] + 1));
                if pinned.len() == PAGES as usize {
                    full_pins.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        println!(
            "gup_fast: {} pages pinned, {} backed out by the recheck",
            pins.taken - pins.backed_out,
            pins.backed_out
        );
    });
    assert!(retract(&mm)?);
    mm.rcu().rcu_barrier();
    println!(
        "{} retract-and-refault rounds, {} full GUP-fast walks; {} PTE tables left",
        rounds.load(Ordering::Relaxed),
        full_pins.load(Ordering::Relaxed),
        mm.tables_live()
    );
    assert_eq!(mm.tables_live(), 0);
    Ok(())
}
