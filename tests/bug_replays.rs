//! Kernel bug replays: one module per bug of `kernel-protocol.md` §(d), named after it.
//!
//! Each module replays the **buggy** ordering and shows that it is either rejected at compile
//! time (a `tests/ui/` case, named in the module docs) or, written through an `unsafe` escape
//! hatch or as a plain wrong ordering of public calls, caught at run time: by the use-after-free
//! audit, or by a wrong result (a pin of a page that is no longer mapped, an anonymous page
//! `translate` no longer finds, a `check_tables` report, a bogus pmd). It then runs the
//! **fixed** ordering, the crate's real operation, on several threads for a bounded time and
//! checks that the audit stays silent, the tables are consistent after `rcu_barrier`, and the
//! wrong result never shows.
//!
//! Buggy variants live only here, in the tests, never as knobs in `src`.
//!
//! The concurrent runs take a process-wide lock (they need their threads to run in parallel on
//! small machines) and last `RUN`, or up to `HARD_STOP` on a loaded machine until they have
//! made progress.
//!
//! Not replayed: B3 (retraction that did not exclude every walk-lock class: since B5 the
//! lock-based removers here rely on the PMD and PTE locks plus RCU instead, and the one remover
//! that works by exclusion, `free_pgtables`, needs the `Exclusive` token, built by taking every
//! walk-lock class; no ordering of public calls skips one), B5 (a protocol change, not a bug),
//! B8 (hugetlb PMD sharing is not modelled) and B12 (no secondary MMUs).

mod common;

use common::{assert_clean, on_another_thread};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst, fence};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use typed_pgtable::mmu::{
    FrameKind, Mmu, MmuConfig, PAGE_SIZE, PMD_SIZE, PageRef, PmdKind, VmaKind,
};
use typed_pgtable::provenance::{DetachedPmd, Fresh, InTable, PmdRef, Retired, pte_offset_map};

/// How long each concurrent run lasts at least.
const RUN: Duration = Duration::from_millis(500);

/// How long a concurrent run may go on when it has not made progress by `RUN` (a loaded
/// machine): it stops as soon as it has, and never later than this.
const HARD_STOP: Duration = Duration::from_millis(1500);

/// Start of the address range the replays use (2 MiB aligned).
const BASE: u64 = 0x4000_0000;

fn new_mmu(frames: usize) -> Mmu {
    Mmu::new(MmuConfig {
        frames,
        va_limit: 1 << 32,
    })
    .unwrap()
}

/// A fresh MMU with one VMA of `kind` over the 2 MiB at `BASE`: where most replays run.
fn mmu_with_vma(frames: usize, kind: VmaKind) -> Mmu {
    let mmu = new_mmu(frames);
    mmu.mmap(BASE, PMD_SIZE, kind).unwrap();
    mmu
}

/// [`mmu_with_vma`] with a page faulted in at `va`, so a PTE table is installed there.
fn mmu_with_page(frames: usize, kind: VmaKind, va: u64) -> Mmu {
    let mmu = mmu_with_vma(frames, kind);
    mmu.map_page(va).unwrap();
    mmu
}

/// One round of a nolock user at `va`: under the mmap read lock (which no longer keeps the
/// table), `f` gets the pmd; nothing happens if an upper level is missing.
fn under_mmap_lock(mmu: &Mmu, va: u64, f: impl FnOnce(&PmdRef<'_, '_, Mmu, InTable>)) {
    let mm = mmu.mmap_read_lock();
    if let Some(pmd) = mm.pmd_offset(va).unwrap() {
        f(&pmd);
    }
}

/// The audit reported an access of kind `access`; `what` says what that means for the replay.
#[track_caller]
fn assert_reported(mmu: &Mmu, access: &str, what: &str) {
    let report = mmu.audit().report();
    assert!(
        report.iter().any(|v| v.access == access),
        "{what}: {report:?}"
    );
}

/// A worker thread of a concurrent run: `step` over and over until `stop` is set.
fn spawn_until_stopped<'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    stop: &'scope AtomicBool,
    step: impl FnMut() + Send + 'scope,
) {
    s.spawn(move || common::until_stopped(stop, step));
}

/// One round of a refault thread: the next of the first 8 pages from `base` faulted back in
/// (if it is mapped already, or the range is huge, nothing happens).
fn refault_round(mmu: &Mmu, base: u64) -> impl FnMut() + Send + '_ {
    let mut i = 0;
    move || {
        i += 1;
        let _ = mmu.map_page(base + (i % 8) * PAGE_SIZE);
    }
}

/// Each counter moved: the work it counts (named in the message) happened at least once.
#[track_caller]
fn assert_happened(work: &[(&AtomicU64, &str)]) {
    for &(count, none) in work {
        assert!(count.load(SeqCst) > 0, "{none}");
    }
}

/// Runs on the test's own thread while the workers run: sets `stop` after `RUN`, or, if
/// `progressed` is still false then, as soon as it turns true, but never after `HARD_STOP`.
fn stop_after_run(stop: &AtomicBool, progressed: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < RUN || (!progressed() && start.elapsed() < HARD_STOP) {
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, SeqCst);
}

/// [`stop_after_run`] until every counter of `work` has moved, then each must have: the work
/// it counts (named in the message for when it did not) happened at least once.
#[track_caller]
fn stop_after_work(stop: &AtomicBool, work: &[(&AtomicU64, &str)]) {
    stop_after_run(stop, || {
        work.iter().all(|(count, _)| count.load(SeqCst) > 0)
    });
    assert_happened(work);
}

/// The concurrent replays run one at a time: each needs its threads to run in parallel, and
/// the machine may have only a couple of CPUs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A concurrent replay: one at a time ([`serial`]), the threads that `run` starts on the scope,
/// and once they are all done, the MMU must be clean ([`assert_clean`]). Returns what `run`
/// returned.
fn concurrently<'env, R>(
    mmu: &'env Mmu,
    run: impl for<'scope> FnOnce(&'scope thread::Scope<'scope, 'env>) -> R,
) -> R {
    let _serial = serial();
    let out = thread::scope(run);
    assert_clean(mmu);
    out
}

/// A concurrent replay that runs until its work is done: one at a time ([`serial`]), the
/// threads that `spawn` starts on the scope (each watching `stop`) until [`stop_after_work`]
/// with `work`. Once they are all done, no counter of `never` may have moved (its message says
/// what it counts), and the MMU must be clean ([`assert_clean`]).
fn until_work_done<'env>(
    mmu: &'env Mmu,
    stop: &'env AtomicBool,
    work: &[(&AtomicU64, &str)],
    never: &[(&AtomicU64, &str)],
    spawn: impl for<'scope> FnOnce(&'scope thread::Scope<'scope, 'env>),
) {
    let _serial = serial();
    thread::scope(|s| {
        spawn(s);
        stop_after_work(stop, work);
    });
    for &(count, what) in never {
        assert_eq!(count.load(SeqCst), 0, "{what}");
    }
    assert_clean(mmu);
}

/// Waits (bounded) until `counter` moves past `from`: the other threads are running.
fn wait_for_progress(counter: &AtomicU64, from: u64) {
    let until = Instant::now() + Duration::from_millis(2);
    while counter.load(SeqCst) == from && Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// What lockless walkers saw that they must never see.
#[derive(Default)]
struct Seen {
    /// Walks that mapped a table.
    tables: u64,
    /// A pmd classified `Bad`, a huge pmd naming a non-data frame, a poisoned PTE.
    bogus: u64,
    /// A present PTE naming a frame that is not a live data page.
    dead_pages: u64,
}

/// A lockless walk of the 2 MiB region at `va`, the way GUP-fast or a hardware walker does it:
/// one RCU section, a copy of the pmd, a map of the table it names, every entry read.
///
/// Inside the section every page a present PTE names is alive: removers clear the PTE (or
/// detach the table) first and drop the page only after a grace period.
fn lockless_walk(mmu: &Mmu, va: u64, seen: &mut Seen) {
    let guard = mmu.rcu_read_lock();
    let Some(copy) = mmu.pmd_copy_lockless(&guard, va).unwrap() else {
        return;
    };
    match copy.pmd_val().kind() {
        PmdKind::Bad => seen.bogus += 1,
        PmdKind::Huge(head) => {
            if mmu.frame_kind(head) != Some(FrameKind::Data) {
                seen.bogus += 1;
            }
        }
        PmdKind::Table(_) => {
            let map = pte_offset_map(&copy, va).expect("a table value always maps");
            seen.tables += 1;
            for pte in map.entries() {
                if pte.is_bad() {
                    seen.bogus += 1;
                } else if let Some(pfn) = pte.pfn().filter(|_| !pte.is_special()) {
                    if mmu.frame_kind(pfn) != Some(FrameKind::Data) {
                        seen.dead_pages += 1;
                    }
                }
            }
        }
        PmdKind::None | PmdKind::Migration | PmdKind::NotPresent => {}
    }
}

/// Lockless walkers over `va` until `stop`; returns what they saw. `tables` counts the walks
/// that mapped a table, for the other threads to wait on. One walk in `full_every` reads the
/// whole table (and holds it the longest); the others only translate and pin (quick, so that
/// short-lived values are seen too).
fn walk_until(mmu: &Mmu, va: u64, stop: &AtomicBool, tables: &AtomicU64, full_every: u64) -> Seen {
    let mut seen = Seen::default();
    let mut i = 0u64;
    common::until_stopped(stop, || {
        i += 1;
        if i % full_every == 0 {
            let before = seen.tables;
            lockless_walk(mmu, va, &mut seen);
            tables.fetch_add(seen.tables - before, SeqCst);
        } else {
            let _ = mmu.translate(va).unwrap();
        }
        for pin in mmu.gup_fast(va, 2).unwrap() {
            assert_eq!(
                mmu.frame_kind(pin.pfn()),
                Some(FrameKind::Data),
                "a pin of a free page"
            );
        }
    });
    seen
}

fn assert_walkers_saw_nothing_wrong(seen: &Seen) {
    assert_eq!(seen.bogus, 0, "a lockless walker saw a bogus pmd or PTE");
    assert_eq!(
        seen.dead_pages, 0,
        "a lockless walker saw a PTE of a page that was already freed"
    );
}

/// The bug of B2 and B9: a table just detached by `pmdp_collapse_flush` is laundered into a
/// `Fresh` one and freed at once, with no grace period for the walkers that still have it
/// mapped.
fn free_at_once(mmu: &Mmu, retired: DetachedPmd<'_, Mmu, Retired>) {
    let value = retired.pmd_val();
    std::mem::forget(retired);
    // SAFETY: deliberately broken (the bug): the table was installed until just now and a
    // walker (lockless, or a nolock user) still has it mapped, so it is not `Fresh`.
    let laundered = unsafe { DetachedPmd::<Mmu, Fresh>::from_pmd(mmu, value) }.unwrap();
    laundered.pte_free();
}

/// A race of workers against lockless walkers of `BASE` in `mmu`: `walkers` of them, each
/// reading the whole table in one walk of `full_every` ([`walk_until`]).
struct Race<'m> {
    mmu: &'m Mmu,
    walkers: usize,
    full_every: u64,
    /// Set when the run is over.
    stop: AtomicBool,
    /// The walks that mapped a table: the workers wait on it to let the walkers find a table.
    tables: AtomicU64,
}

impl<'m> Race<'m> {
    fn new(mmu: &'m Mmu, walkers: usize, full_every: u64) -> Self {
        Race {
            mmu,
            walkers,
            full_every,
            stop: AtomicBool::new(false),
            tables: AtomicU64::new(0),
        }
    }

    /// The concurrent half of a replay: the workers that `spawn` starts on the scope (each
    /// watching `stop`) against the walkers, until [`stop_after_work`] with `work`. Then no
    /// walker may have seen anything wrong.
    fn run<'env>(
        &'env self,
        spawn: impl for<'scope> FnOnce(&'scope thread::Scope<'scope, 'env>),
        work: &[(&AtomicU64, &str)],
    ) {
        let (mmu, stop, tables, full_every) = (self.mmu, &self.stop, &self.tables, self.full_every);
        let seen = concurrently(mmu, |s| {
            spawn(s);
            let walkers: Vec<_> = (0..self.walkers)
                .map(|_| s.spawn(move || walk_until(mmu, BASE, stop, tables, full_every)))
                .collect();
            stop_after_work(stop, work);
            walkers
                .into_iter()
                .map(|w| w.join().unwrap())
                .collect::<Vec<_>>()
        });
        for seen in &seen {
            assert_walkers_saw_nothing_wrong(seen);
        }
    }
}

mod b1_gup_fast_vs_collapse {
    //! **B1 — `70cbc3cc78a9` "mm: gup: fix the fast GUP race against THP collapse"** (Yang Shi,
    //! 2022).
    //!
    //! *What went wrong:* GUP-fast copied the pmd, mapped the PTE table, read a PTE, took a
    //! reference on the page and then rechecked only the PTE. THP collapse had meanwhile cleared
    //! the pmd (`pmdp_collapse_flush`) and was copying the page; the detached table still held
    //! the stale PTE, unchanged, so GUP-fast returned a pin of a page that was no longer mapped
    //! (writes through it were lost).
    //!
    //! *Invariant broken:* a case-2 reader (a pmd copied under RCU) must revalidate the **source
    //! slot** after taking its reference (I5): "GUP-fast pins first, then checks; everyone else
    //! clears first, then checks for pins".
    //!
    //! *Replay:* no compile-time case: the walk itself is correctly protected (the copy is
    //! `CopiedUnderRcu<'g>` and no memory is used after free), so the damage is a wrong result.
    //! [`buggy_pte_only_recheck_pins_a_page_that_is_no_longer_mapped`] runs GUP-fast's steps by
    //! hand on one thread and retracts the table between the reference and the recheck: the
    //! PTE-only recheck accepts the pin, `translate` no longer finds the page and the pin is its
    //! only reference, while the fixed recheck (`copy.still_installed()`) backs out.
    //! [`fixed_gup_fast_never_pins_a_page_a_collapse_committed`] runs `Mmu::gup_fast` on two
    //! threads against a collapse written in the kernel's order (clear the pmd, then check the
    //! page refcounts, abort if pinned) and checks that no pin returned by `gup_fast` is ever of
    //! a page whose collapse committed.
    //!
    //! *Checked:* with the pmd recheck removed from `Mmu::gup_fast` (`src/mmu/gup.rs`), the
    //! concurrent test fails (pins of committed pages).

    use super::*;
    use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
    use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_lock};

    const VA: u64 = BASE + 0x3000;

    #[test]
    fn buggy_pte_only_recheck_pins_a_page_that_is_no_longer_mapped() {
        let mmu = new_mmu(1024);
        let pfn = mmu.map_page(VA).unwrap();

        // GUP-fast, by hand: RCU section, pmd copy, map, pte, reference.
        let guard = mmu.rcu_read_lock();
        let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        let map = pte_offset_map(&copy, VA).unwrap();
        let pte = map.pte();
        assert_eq!(pte.pfn(), Some(pfn));
        let pin = mmu.try_get_page(pfn).expect("the page is mapped");

        // THP collapse detaches the table now. It only defers its frees, so it runs on this
        // thread without waiting for our RCU section.
        assert_eq!(on_another_thread(|| mmu.retract_pte_table(VA).unwrap()), 1);

        // The recheck before the fix: the PTE is unchanged (the detached table keeps it) ...
        let buggy_keeps_pin = map.pte() == pte;
        // ... the recheck after it: the pmd slot no longer holds the copied value.
        let fixed_keeps_pin = copy.still_installed() && map.pte() == pte;
        assert!(
            buggy_keeps_pin,
            "the stale PTE survives in the detached table"
        );
        assert!(!fixed_keeps_pin, "the pmd recheck sees the collapse");
        drop(map);
        drop(guard);

        // The buggy GUP-fast returned the pin: once the collapse's deferred puts ran, the pin
        // is the page's only reference and the page is mapped nowhere.
        mmu.rcu_barrier();
        assert_eq!(mmu.translate(VA).unwrap(), None, "pinned page is unmapped");
        assert_eq!(mmu.page_refs(pfn), 1, "only the pin holds the page");
        // The crate's GUP-fast does not pin anything there.
        assert!(mmu.gup_fast(VA, 1).unwrap().is_empty());
        drop(pin);
        assert_eq!(mmu.frame_kind(pfn), Some(FrameKind::Free));
        // Not a use-after-free: a wrong result.
        assert_eq!(mmu.audit().violations(), 0);
    }

    const PAGES: u64 = 4;
    const IDLE: u8 = 0;
    const CHECKING: u8 = 1;
    const COMMITTED: u8 = 2;

    /// khugepaged's collapse, in the kernel's order: PMD lock, PTE lock, clear the pmd
    /// (`pmdp_collapse_flush`), **then** check the pages for extra references; abort (put the
    /// table back) if one is pinned, else commit: the table goes (`pte_free_defer`) and the
    /// pages are replaced. `marks[pfn]` publishes each page's state to the pinners; a committed
    /// page stays marked (and allocated, so its frame is not reused) until [`release`].
    fn collapse_unless_pinned<'m>(
        mmu: &'m Mmu,
        pages: &[u64],
        marks: &[AtomicU8],
    ) -> Option<Vec<PageRef<'m>>> {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(BASE).unwrap().expect("upper levels exist");
        let pml = pmd_lock(&pmd);
        let ptl = pte_offset_map_lock(&pmd, BASE).expect("the collapser's own table");
        let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
        for &p in pages {
            marks[p as usize].store(CHECKING, SeqCst);
        }
        fence(SeqCst);
        if pages.iter().any(|&p| mmu.page_refs(p) > 1) {
            for &p in pages {
                marks[p as usize].store(IDLE, SeqCst);
            }
            // The failure path: re-install the same table.
            table.pmd_populate(&mm, &pml).map_err(|r| r.error).unwrap();
            return None;
        }
        for &p in pages {
            marks[p as usize].store(COMMITTED, SeqCst);
        }
        // Keep the pages (the freed table's entries drop theirs) so no frame is reused.
        let kept = pages
            .iter()
            .map(|&p| mmu.try_get_page(p).expect("mapped in the detached table"))
            .collect();
        drop(pml);
        page_table_check_pte_clear_range(mmu, BASE, &table.pmd());
        table.pte_free_defer();
        Some(kept)
    }

    /// Drops the pages of committed collapses once every pinner that could still be judging a
    /// pin of them has left its RCU section.
    fn release(mmu: &Mmu, collapsed: &mut Vec<PageRef<'_>>, marks: &[AtomicU8]) {
        mmu.rcu_barrier();
        for p in collapsed.drain(..) {
            marks[p.pfn() as usize].store(IDLE, SeqCst);
            drop(p);
        }
    }

    #[test]
    fn fixed_gup_fast_never_pins_a_page_a_collapse_committed() {
        let frames = 2048;
        let mmu = new_mmu(frames);
        let marks: Vec<AtomicU8> = (0..frames).map(|_| AtomicU8::new(IDLE)).collect();
        let stop = AtomicBool::new(false);
        let [pins, bad, commits, aborts]: [AtomicU64; 4] = Default::default();
        until_work_done(
            &mmu,
            &stop,
            &[
                (&commits, "no collapse committed"),
                (&pins, "no page was pinned"),
            ],
            &[(
                &bad,
                "gup_fast returned a pin of a page whose collapse committed",
            )],
            |s| {
                s.spawn(|| {
                    let mut collapsed = Vec::new();
                    'run: while !stop.load(SeqCst) {
                        let pages: Vec<u64> = (0..PAGES)
                            .map(|i| mmu.map_page(BASE + i * PAGE_SIZE).unwrap())
                            .collect();
                        // Let the pinners work on the installed table.
                        wait_for_progress(&pins, pins.load(SeqCst));
                        let kept = loop {
                            if let Some(kept) = collapse_unless_pinned(&mmu, &pages, &marks) {
                                break kept;
                            }
                            aborts.fetch_add(1, SeqCst);
                            if stop.load(SeqCst) {
                                break 'run;
                            }
                            thread::yield_now();
                        };
                        commits.fetch_add(1, SeqCst);
                        collapsed.extend(kept);
                        if collapsed.len() >= 64 {
                            release(&mmu, &mut collapsed, &marks);
                        }
                    }
                    release(&mmu, &mut collapsed, &marks);
                });
                for t in 0..2u64 {
                    let (mmu, marks, stop, pins, bad) = (&mmu, &marks, &stop, &pins, &bad);
                    s.spawn(move || {
                        let mut i = t;
                        while !stop.load(SeqCst) {
                            i += 1;
                            // An outer section keeps the collapser's grace period open until the
                            // pin has been judged.
                            let guard = mmu.rcu_read_lock();
                            let got = mmu.gup_fast(BASE + (i % PAGES) * PAGE_SIZE, 1).unwrap();
                            fence(SeqCst);
                            for pin in &got {
                                let state = loop {
                                    let m = marks[pin.pfn() as usize].load(SeqCst);
                                    if m != CHECKING {
                                        break m;
                                    }
                                    thread::yield_now();
                                };
                                if state == COMMITTED {
                                    bad.fetch_add(1, SeqCst);
                                }
                                pins.fetch_add(1, SeqCst);
                            }
                            drop(got);
                            drop(guard);
                        }
                    });
                }
            },
        );
        let _ = aborts.load(SeqCst);
    }
}

mod b2_reuse_without_sync {
    //! **B2 — `2ba99c5e0881` "mm/khugepaged: fix GUP-fast interaction by sending IPI"** (Jann
    //! Horn, Nov 2022).
    //!
    //! *What went wrong:* even with B1 fixed, khugepaged freed or reused a table right after
    //! `pmdp_collapse_flush`. Where the TLB flush does not IPI (arm64 broadcast TLBI,
    //! paravirtualised flushes), a GUP-fast walker that had read the pmd before the flush could
    //! still be reading the table when it was freed. Fix: `tlb_remove_table_sync_one()` before
    //! the free or the reuse (anon `collapse_huge_page` still does it).
    //!
    //! *Invariant broken:* freeing or reusing a table must wait for every walker of the
    //! lockless (IRQs-off / RCU) domain (I9).
    //!
    //! *Replay:* the buggy order does not compile: a table out of `pmdp_collapse_flush` is
    //! `Retired`, and neither `pte_free` (`tests/ui/21_retired_table_pte_free.rs`) nor
    //! `pgtable_trans_huge_deposit` (`tests/ui/22_retired_table_deposit.rs`) exist for it.
    //! [`buggy_immediate_free_after_collapse_flush_is_a_use_after_free`] launders it to `Fresh`
    //! through the `unsafe` `DetachedPmd::from_pmd` and frees it under a walker's live map: the
    //! walker's next read is reported by the audit.
    //! [`fixed_collapse_waits_for_the_walker_before_reusing_the_table`] shows that
    //! `Mmu::collapse_huge_page` (which calls `tlb_remove_table_sync_one`) does not return while a
    //! walker on another thread still has the table mapped, and
    //! [`fixed_collapse_and_free_cycles_under_lockless_walkers`] runs collapse / unmap cycles
    //! (the reused table is freed at once from the deposit) under lockless walkers.
    //!
    //! *Checked:* with `tlb_remove_table_sync_one()` in `Mmu::collapse_huge_page` replaced by the
    //! same `unsafe` laundering, both fixed tests fail (the collapse returns before the walker
    //! lets go; the walkers read poisoned, freed tables and the audit reports thousands of
    //! reads).

    use super::*;
    use typed_pgtable::mmu::CollapseOutcome;
    use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_lock};

    const VA: u64 = BASE + 0x5000;

    #[test]
    fn buggy_immediate_free_after_collapse_flush_is_a_use_after_free() {
        let mmu = new_mmu(1024);
        mmu.map_page(VA).unwrap();

        // A GUP-fast walker: a pmd copy under an RCU section, the table mapped.
        let guard = mmu.rcu_read_lock();
        let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        let map = pte_offset_map(&copy, VA).unwrap();
        assert!(map.pte().is_present());

        // khugepaged, on its own thread: collapse flush, then free at once (nothing here waits
        // for the walker, whose map stays alive).
        on_another_thread(|| {
            let mm = mmu.mmap_write_lock();
            let pmd = mm.pmd_offset(VA).unwrap().unwrap();
            let pml = pmd_lock(&pmd);
            let ptl = pte_offset_map_lock(&pmd, VA).unwrap();
            let retired = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
            drop(pml);
            free_at_once(&mmu, retired);
        });

        // The walker reads on.
        let pte = map.pte();
        assert!(pte.is_bad(), "the freed table is poisoned");
        assert!(mmu.audit().violations() > 0);
        let report = mmu.audit().report();
        assert!(
            report
                .iter()
                .any(|v| v.op == "pte_offset_map" && v.access == "read"),
            "{report:?}"
        );
    }

    #[test]
    fn fixed_collapse_waits_for_the_walker_before_reusing_the_table() {
        let _serial = serial();
        let mmu = mmu_with_page(4096, VmaKind::Anon, VA);
        let released = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            s.spawn(|| {
                let guard = mmu.rcu_read_lock();
                let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
                let map = pte_offset_map(&copy, VA).unwrap();
                tx.send(()).unwrap();
                let until = Instant::now() + Duration::from_millis(100);
                while Instant::now() < until {
                    assert!(map.entries().all(|p| !p.is_bad()));
                    thread::yield_now();
                }
                released.store(true, SeqCst);
                drop(map);
                drop(guard);
            });
            rx.recv().unwrap();
            // Detaches the table, syncs with lockless walkers, then reuses it as the deposit.
            assert_eq!(
                mmu.collapse_huge_page(BASE).unwrap(),
                CollapseOutcome::Collapsed
            );
            assert!(
                released.load(SeqCst),
                "the table was reused while a walker still had it mapped"
            );
        });
        // The deposit (the reused table) is freed at once by the zap: it is `Fresh`.
        mmu.unmap_huge(BASE).unwrap();
        assert!(mmu.stats().tables_freed_now >= 1);
        assert_clean(&mmu);
    }

    #[test]
    fn fixed_collapse_and_free_cycles_under_lockless_walkers() {
        let mmu = mmu_with_vma(8192, VmaKind::Anon);
        let race = Race::new(&mmu, 2, 1);
        let collapses = AtomicU64::new(0);
        race.run(
            |s| {
                spawn_until_stopped(s, &race.stop, || {
                    for i in 0..4 {
                        let _ = mmu.map_page(BASE + i * PAGE_SIZE);
                    }
                    // Let the walkers find the table.
                    wait_for_progress(&race.tables, race.tables.load(SeqCst));
                    match mmu.collapse_huge_page(BASE) {
                        Ok(CollapseOutcome::Collapsed) => {
                            collapses.fetch_add(1, SeqCst);
                        }
                        Ok(_) | Err(typed_pgtable::Error::OutOfFrames { .. }) => {}
                        Err(e) => panic!("collapse_huge_page: {e}"),
                    }
                    // Frees the deposited (reused) table at once.
                    let _ = mmu.unmap_huge(BASE);
                });
            },
            &[
                (&collapses, "no collapse ran"),
                (&race.tables, "no walker mapped a table"),
            ],
        );
    }
}

mod b4_anon_vma_race {
    //! **B4 — "mm/khugepaged: fix ->anon_vma race"** (Jann Horn, Jan 2023).
    //!
    //! *What went wrong:* `retract_page_tables` tested `vma->anon_vma` before taking the locks
    //! that keep it stable. A write fault on the private file mapping could attach an anon_vma
    //! and install an anonymous (CoW) page in between; the retraction then removed a table that
    //! held the only mapping of anonymous data. Fix: repeat the check under the PMD and PTE
    //! locks.
    //!
    //! *Invariant broken:* the precondition of a removal (here "no anonymous pages can be in
    //! this table") must be checked while holding the lock that keeps it true.
    //!
    //! *Replay:* no compile-time case (the rmap token's `vma_has_anon_vma` is documented as a
    //! snapshot). [`buggy_check_before_the_locks_loses_an_anonymous_page`] writes the old
    //! `retract_page_tables` with public calls and runs the CoW fault between its check and its
    //! locks, on one thread: the detached table holds an anonymous PTE and `translate` no longer
    //! finds the CoW page. [`fixed_retract_page_tables_vs_cow_faults`] runs `cow_fault` on fresh
    //! file VMAs against `Mmu::retract_page_tables` on another thread: no anonymous page is
    //! lost (`MmuStats::anon_pages_lost` stays 0) and every CoW page is still mapped.
    //!
    //! *Checked:* with the recheck under the locks removed from `Mmu::retract_page_tables`
    //! (`still_retractable` always true), the concurrent test fails (tens of anonymous pages
    //! lost per run).

    use super::*;
    use typed_pgtable::Error;
    use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
    use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_lock};

    const VA: u64 = BASE + 0x2000;

    #[test]
    fn buggy_check_before_the_locks_loses_an_anonymous_page() {
        let mmu = mmu_with_page(1024, VmaKind::File, VA);
        mmu.map_page(VA + PAGE_SIZE).unwrap();

        // retract_page_tables before the fix: the rmap read lock, and the anon_vma test ...
        let rmap = mmu.i_mmap_lock_read();
        assert!(!rmap.vma_has_anon_vma(VA), "no anon_vma yet: retractable");

        // ... then a write fault on the private file mapping (mmap read lock and page-table
        // lock, not the rmap lock): anon_vma_prepare, then the CoW copy.
        let anon = on_another_thread(|| mmu.cow_fault(VA).unwrap());
        assert_eq!(mmu.translate(VA).unwrap(), Some(anon << 12));

        // ... then the removal, without looking again.
        let pmd = rmap.pmd_offset(BASE).unwrap().unwrap();
        let pml = pmd_lock(&pmd);
        let ptl = pte_offset_map_lock(&pmd, BASE).unwrap();
        let fixed_would_skip = rmap.vma_has_anon_vma(VA);
        let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
        drop(pml);
        let report = page_table_check_pte_clear_range(&mmu, BASE, &table.pmd());
        table.pte_free_defer();
        drop(rmap);

        assert_eq!(
            report.anon, 1,
            "the retracted table mapped an anonymous page"
        );
        assert_eq!(
            mmu.translate(VA).unwrap(),
            None,
            "the CoW copy is no longer mapped: anonymous data lost"
        );
        assert!(
            fixed_would_skip,
            "the recheck under the locks sees the anon_vma"
        );
        mmu.rcu_barrier();
        assert_eq!(
            mmu.audit().violations(),
            0,
            "a wrong result, not a use-after-free"
        );
    }

    #[test]
    fn fixed_retract_after_cow_keeps_the_anonymous_page() {
        let mmu = mmu_with_page(1024, VmaKind::File, VA);
        let anon = mmu.cow_fault(VA).unwrap();
        assert_eq!(mmu.retract_page_tables(BASE).unwrap(), 0);
        assert_eq!(mmu.translate(VA).unwrap(), Some(anon << 12));
        assert_eq!(mmu.stats().anon_pages_lost, 0);
        assert_clean(&mmu);
    }

    #[test]
    fn fixed_retract_page_tables_vs_cow_faults() {
        const VMAS: u64 = 200;
        let mmu = new_mmu(8192);
        let stop = AtomicBool::new(false);
        let current = AtomicU64::new(0);
        let cows = AtomicU64::new(0);
        let cowed = concurrently(&mmu, |s| {
            spawn_until_stopped(s, &stop, || {
                let base = current.load(SeqCst);
                if base != 0 {
                    mmu.retract_page_tables(base).unwrap();
                } else {
                    thread::yield_now();
                }
            });
            let cow = s.spawn(|| {
                let mut cowed = Vec::new();
                for i in 0..VMAS {
                    if stop.load(SeqCst) {
                        break;
                    }
                    // A fresh private file mapping with a few file pages: retractable.
                    let base = BASE + i * PMD_SIZE;
                    mmu.mmap(base, PMD_SIZE, VmaKind::File).unwrap();
                    for k in 0..4 {
                        mmu.map_page(base + k * PAGE_SIZE).unwrap();
                    }
                    current.store(base, SeqCst);
                    for _ in 0..i % 4 {
                        thread::yield_now();
                    }
                    let va = base + (i % 4) * PAGE_SIZE;
                    while !stop.load(SeqCst) {
                        match mmu.cow_fault(va) {
                            Ok(anon) => {
                                cowed.push((va, anon));
                                cows.fetch_add(1, SeqCst);
                                break;
                            }
                            // Retracted meanwhile: fault the file page back in and retry.
                            Err(Error::NotMapped { .. }) => {
                                let _ = mmu.map_page(va);
                            }
                            Err(e) => panic!("cow_fault: {e}"),
                        }
                    }
                }
                cowed
            });
            stop_after_run(&stop, || cows.load(SeqCst) > 10 && mmu.stats().retracts > 0);
            cow.join().unwrap()
        });
        mmu.rcu_barrier();
        let stats = mmu.stats();
        assert_eq!(
            stats.anon_pages_lost, 0,
            "a retraction dropped anonymous pages"
        );
        for &(va, anon) in &cowed {
            assert_eq!(
                mmu.translate(va).unwrap(),
                Some(anon << 12),
                "the CoW page at {va:#x} was lost"
            );
        }
        assert!(cowed.len() > 10, "only {} CoW faults ran", cowed.len());
        assert!(stats.retracts > 0, "no table was retracted");
    }
}

mod b6_move_normal_pmd_vs_retract {
    //! **B6 — "mm/mremap: fix move_normal_pmd/retract_page_tables race"** (Jann Horn & David
    //! Hildenbrand, Oct 2024; fixes `1d65b771bc08`, Project Zero issue 371047675).
    //!
    //! *What went wrong:* `move_page_tables` decided to move a whole PTE table before taking the
    //! rmap locks. `retract_page_tables`, holding only the rmap lock for reading, removed the
    //! table meanwhile, and `move_normal_pmd` then `pmd_populate`d the destination from a none or
    //! stale value: a bogus pmd (on x86, physical page 0 as a page table). Fix: after taking the
    //! locks, recheck that the old entry is still a present table.
    //!
    //! *Invariant broken:* anything read before taking the locks that exclude removers must be
    //! revalidated after taking them; the mmap write lock no longer pins PTE tables.
    //!
    //! *Replay:* turning a pmd *value* into a table that can be populated needs the `unsafe`
    //! `DetachedPmd::from_pmd`: `tests/ui/32_b6_populate_from_stale_pmd_value.rs` shows the
    //! stale-value populate does not compile without it.
    //! [`buggy_populate_from_value_read_before_the_locks`] writes the old order with it: read,
    //! retract (same thread), lock, populate. The literal C value (`*old_pmd`, now none) is not
    //! even representable (`from_pmd` gives `NoMap::None`); the stale value is, and after the
    //! grace period `check_tables` reports the new pmd naming a free frame and a lockless walk
    //! through it is reported by the audit. [`fixed_move_normal_pmd_rechecks_under_the_locks`]
    //! and [`fixed_mover_blocked_on_the_rmap_lock_sees_the_retraction`] run `Mmu::move_normal_pmd`
    //! in the same interleavings (`Err(NotMapped)`), and [`fixed_moves_vs_retracts`] runs moves,
    //! retractions, faults and lockless walkers together.
    //!
    //! *Checked:* removing only the recheck from `Mmu::move_normal_pmd` does **not** make the
    //! tests fail: `pte_offset_map_lock` on the old slot (needed for the `Attached` lock that
    //! `pmdp_collapse_flush` takes) finds no table, and the move fails safely. Reverting to the
    //! buggy order (clear the old slot and populate the new one from the value read before the
    //! locks) makes [`fixed_mover_blocked_on_the_rmap_lock_sees_the_retraction`] fail (`Ok(())`)
    //! and [`fixed_moves_vs_retracts`] fail (the bogus table is freed twice).

    use super::*;
    use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
    use typed_pgtable::provenance::{
        DetachedPmd, Retired, pmd_lock, pmdp_collapse_flush, pte_offset_map_lock,
    };
    use typed_pgtable::{Error, NoMap};

    use typed_pgtable::mmu::PmdVal;

    const OLD: u64 = BASE;
    const NEW: u64 = BASE + PMD_SIZE;

    fn setup() -> Mmu {
        let mmu = new_mmu(2048);
        mmu.mmap(OLD, 2 * PMD_SIZE, VmaKind::File).unwrap();
        mmu.map_page(OLD + PAGE_SIZE).unwrap();
        mmu
    }

    /// The start of the race, on one thread: move_page_tables decides to move the whole table
    /// (the pmd is read before the locks), then khugepaged retracts the table under the rmap
    /// read lock only. Returns the value read before the locks.
    fn read_before_the_locks_then_retract(mmu: &Mmu) -> PmdVal {
        let stale = {
            let guard = mmu.rcu_read_lock();
            mmu.pmd_copy_lockless(&guard, OLD)
                .unwrap()
                .unwrap()
                .pmd_val()
        };
        assert!(matches!(stale.kind(), PmdKind::Table(_)));
        assert_eq!(mmu.retract_page_tables(OLD).unwrap(), 1);
        stale
    }

    #[test]
    fn buggy_populate_from_value_read_before_the_locks() {
        let mmu = setup();
        let stale = read_before_the_locks_then_retract(&mmu);

        // move_normal_pmd: mmap write lock, rmap write lock, PMD locks, no recheck.
        {
            let mm = mmu.mmap_write_lock();
            let old_pmd = mm.pmd_offset(OLD).unwrap().unwrap();
            let new_pmd = mm.pmd_alloc(NEW).unwrap();
            let _rmap = mmu.i_mmap_lock_write();
            let pml = pmd_lock(&old_pmd);
            // The C code populated from `*old_pmd`, which is none now: that value is no table.
            let now = pml.pmdp_get();
            // SAFETY: `from_pmd` refuses a none value before any ownership matters.
            let none = unsafe { DetachedPmd::<Mmu, Retired>::from_pmd(&mmu, now) };
            assert_eq!(none.err(), Some(NoMap::None));
            // The stale value still names the retracted table.
            // SAFETY: deliberately broken (the bug): the table is owned by the retraction's
            // deferred free, not by us.
            let table = unsafe { DetachedPmd::<Mmu, Retired>::from_pmd(&mmu, stale) }.unwrap();
            table
                .pmd_populate_at(&mm, &pml, &new_pmd)
                .map_err(|r| r.error)
                .unwrap();
        }

        // The retraction's grace period ends and the table is freed under the new pmd.
        mmu.rcu_barrier();
        let problems = mmu.check_tables();
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("{NEW:#x}")) && p.contains("Free")),
            "{problems:?}"
        );
        // A lockless walker (the hardware, GUP-fast) maps the free frame as a table.
        assert_eq!(mmu.audit().violations(), 0);
        let _ = mmu.translate(NEW + PAGE_SIZE).unwrap();
        assert_reported(
            &mmu,
            "map of a non-table frame",
            "no walk through it was reported",
        );
    }

    #[test]
    fn fixed_move_normal_pmd_rechecks_under_the_locks() {
        let mmu = setup();
        read_before_the_locks_then_retract(&mmu);
        assert_eq!(
            mmu.move_normal_pmd(OLD, NEW),
            Err(Error::NotMapped { addr: OLD })
        );
        assert_eq!(mmu.stats().pmd_moves, 0);
        assert_clean(&mmu);
    }

    #[test]
    fn fixed_mover_blocked_on_the_rmap_lock_sees_the_retraction() {
        let mmu = setup();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let mmu = &mmu;
        concurrently(mmu, |s| {
            let retractor = s.spawn(move || {
                let rmap = mmu.i_mmap_lock_read();
                ready_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                // The mover passes its check before the locks and blocks in
                // `i_mmap_lock_write` behind us.
                thread::sleep(Duration::from_millis(50));
                // retract_page_tables, under the rmap read lock only.
                let pmd = rmap.pmd_offset(OLD).unwrap().unwrap();
                let pml = pmd_lock(&pmd);
                let ptl = pte_offset_map_lock(&pmd, OLD).unwrap();
                let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
                drop(pml);
                page_table_check_pte_clear_range(mmu, OLD, &table.pmd());
                table.pte_free_defer();
            });
            ready_rx.recv().unwrap();
            let mover = s.spawn(move || {
                go_tx.send(()).unwrap();
                mmu.move_normal_pmd(OLD, NEW)
            });
            retractor.join().unwrap();
            assert_eq!(mover.join().unwrap(), Err(Error::NotMapped { addr: OLD }));
        });
        assert_eq!(mmu.translate(NEW + PAGE_SIZE).unwrap(), None);
    }

    #[test]
    fn fixed_moves_vs_retracts() {
        let mmu = new_mmu(4096);
        mmu.mmap(OLD, 2 * PMD_SIZE, VmaKind::File).unwrap();
        let stop = AtomicBool::new(false);
        let seen = concurrently(&mmu, |s| {
            spawn_until_stopped(s, &stop, || {
                let _ = mmu.move_normal_pmd(OLD, NEW);
                let _ = mmu.move_normal_pmd(NEW, OLD);
            });
            spawn_until_stopped(s, &stop, || {
                mmu.retract_page_tables(OLD).unwrap();
                mmu.retract_page_tables(NEW).unwrap();
            });
            spawn_until_stopped(s, &stop, refault_round(&mmu, OLD));
            let walker = s.spawn(|| {
                let mut seen = Seen::default();
                common::until_stopped(&stop, || {
                    lockless_walk(&mmu, OLD, &mut seen);
                    lockless_walk(&mmu, NEW, &mut seen);
                });
                seen
            });
            stop_after_run(&stop, || {
                let stats = mmu.stats();
                stats.pmd_moves > 0 && stats.retracts > 0
            });
            walker.join().unwrap()
        });
        assert_walkers_saw_nothing_wrong(&seen);
        let stats = mmu.stats();
        assert!(stats.pmd_moves > 0, "no table was moved");
        assert!(stats.retracts > 0, "no table was retracted");
        assert_eq!(stats.anon_pages_lost, 0);
    }
}

mod b7_split_invalidates_migration_entry {
    //! **B7 — `3a5a8d343e1c` "mm: fix race between __split_huge_pmd_locked() and GUP-fast"**
    //! (Ryan Roberts, May 2024), with the arm64 companion `e783331c7720` "arm64/mm:
    //! pmd_mkinvalid() must handle swap pmds".
    //!
    //! *What went wrong:* the THP split called `pmdp_invalidate()` on every huge pmd, including
    //! a non-present migration entry. On arm64 `pmd_mkinvalid()` made that entry look present,
    //! so a lockless walker (GUP-fast) read swap-entry bits as a PFN or a table. Fix: invalidate
    //! only present pmds; split a migration pmd as it is.
    //!
    //! *Invariant broken:* a value lockless readers can observe must never be misclassified
    //! (present / leaf / table) during a transition.
    //!
    //! *Replay:* a classification is a run-time matter, so no compile-time case.
    //! [`buggy_invalidated_migration_pmd_is_walked_as_a_table`] places what the arm64
    //! invalidation of a migration pmd looks like (the entry with the present bit set) with
    //! `Mmu::inject_pmd`: a lockless walk then maps the page under migration as a PTE table,
    //! which the audit reports ("map of a non-table frame") and `check_tables` flags.
    //! [`fixed_split_of_a_migration_pmd_keeps_it_non_present`] shows `Mmu::split_huge_pmd`
    //! returns `SplitOutcome::MigrationSplit` with non-present migration PTEs, and
    //! [`fixed_splits_under_lockless_walkers`] splits present THPs and migration pmds over and
    //! over under lockless walkers and GUP-fast: nothing is misclassified.
    //!
    //! *Checked:* with an arm64-style invalidation (set the present bit) added to the migration
    //! arm of `split_huge_pmd_at` (`src/mmu/thp.rs`), the concurrent test fails (thousands of
    //! "map of a non-table frame" reports per run). (The model's
    //! own `pmdp_invalidate` is x86-like — clear present, keep huge — under which a migration
    //! entry stays non-present; the x86 symptom, a corrupted swap offset, is not modelled.)

    use super::*;
    use typed_pgtable::Error;
    use typed_pgtable::mmu::{PRESENT, Pte, SplitOutcome, migration_entry};
    use typed_pgtable::provenance::pte_offset_map_lock;

    const VA: u64 = BASE + 0x7000;

    #[test]
    fn buggy_invalidated_migration_pmd_is_walked_as_a_table() {
        let mmu = mmu_with_vma(2048, VmaKind::Anon);
        let head = mmu.map_huge(BASE).unwrap();
        // Migration replaces the huge pmd with a migration entry naming the page.
        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
        unsafe { mmu.inject_pmd(BASE, migration_entry(head)) }.unwrap();
        assert_eq!(mmu.translate(VA).unwrap(), None);
        // The split, before the fix, on arm64: pmdp_invalidate() of the migration entry leaves
        // it looking present.
        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
        unsafe { mmu.inject_pmd(BASE, migration_entry(head) | PRESENT) }.unwrap();
        {
            let guard = mmu.rcu_read_lock();
            let copy = mmu.pmd_copy_lockless(&guard, BASE).unwrap().unwrap();
            assert_eq!(
                copy.pmd_val().kind(),
                PmdKind::Table(head),
                "swap bits classified as a PTE table"
            );
        }
        // A lockless walker maps the data page as a table.
        let _ = mmu.translate(VA).unwrap();
        assert_reported(
            &mmu,
            "map of a non-table frame",
            "no walk through it was reported",
        );
        let problems = mmu.check_tables();
        assert!(
            problems.iter().any(|p| p.contains("Data frame")),
            "{problems:?}"
        );
    }

    #[test]
    fn fixed_split_of_a_migration_pmd_keeps_it_non_present() {
        let mmu = mmu_with_vma(2048, VmaKind::Anon);
        let head = mmu.map_huge(BASE).unwrap();
        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
        unsafe { mmu.inject_pmd(BASE, migration_entry(head)) }.unwrap();
        assert_eq!(
            mmu.split_huge_pmd(VA).unwrap(),
            SplitOutcome::MigrationSplit
        );
        {
            let mm = mmu.mmap_read_lock();
            let pmd = mm.pmd_offset(BASE).unwrap().unwrap();
            let ptl = pte_offset_map_lock(&pmd, BASE).unwrap();
            for (i, pte) in ptl.entries().enumerate() {
                assert!(!pte.is_present(), "a migration PTE must not be present");
                assert_eq!(pte, Pte::migration(head + i as u64));
            }
        }
        assert_eq!(mmu.translate(VA).unwrap(), None);
        assert!(mmu.gup_fast(VA, 1).unwrap().is_empty());
        assert_clean(&mmu);
    }

    #[test]
    fn fixed_splits_under_lockless_walkers() {
        let mmu = mmu_with_vma(8192, VmaKind::Anon);
        // The page the migration entries name: a data frame, never a table.
        let migrating = mmu.alloc_data_frame().unwrap();
        let race = Race::new(&mmu, 2, 8);
        let [splits, migration_splits]: [AtomicU64; 2] = Default::default();
        race.run(
            |s| {
                spawn_until_stopped(s, &race.stop, || {
                    // A present THP: pmdp_invalidate, withdraw, fill, publish.
                    match mmu.map_huge(BASE) {
                        Ok(_) => {
                            assert_eq!(mmu.split_huge_pmd(VA).unwrap(), SplitOutcome::Split);
                            splits.fetch_add(1, SeqCst);
                        }
                        Err(Error::OutOfFrames { .. }) => mmu.rcu_barrier(),
                        Err(e) => panic!("map_huge: {e}"),
                    }
                    mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
                    // Migration pmds (over the huge zero page and its deposit): no
                    // invalidation, withdraw, fill with migration PTEs, publish.
                    for _ in 0..16 {
                        mmu.map_huge_zero(BASE).unwrap();
                        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
                        unsafe { mmu.inject_pmd(BASE, migration_entry(migrating.pfn())) }.unwrap();
                        assert_eq!(
                            mmu.split_huge_pmd(VA).unwrap(),
                            SplitOutcome::MigrationSplit
                        );
                        migration_splits.fetch_add(1, SeqCst);
                        mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
                    }
                });
            },
            &[
                (&splits, "no THP was split"),
                (&migration_splits, "no migration pmd was split"),
            ],
        );
    }
}

mod b9_ptlock_freed_before_grace_period {
    //! **B9 — PT_RECLAIM ptlock use-after-free** (syzbot "KASAN: slab-use-after-free Read in
    //! move_pages_pte", Dec 2024). Fixed by "mm: pgtable: make ptlock be freed by RCU", then
    //! properly by Qi Zheng's v6.14 series moving `pagetable_*_dtor()` to
    //! `__tlb_remove_table()` ("mm: pgtable: introduce pagetable_dtor()", "mm: pgtable:
    //! introduce generic __tlb_remove_table()").
    //!
    //! *What went wrong:* with split PTE locks allocated separately, the table's destructor
    //! freed the lock **before** the RCU grace period, while a `pte_offset_map_*_nolock` user
    //! (which holds only an RCU-protected map) was about to spin on it.
    //!
    //! *Invariant broken:* everything reachable from a mapped table, including its lock, lives
    //! until the grace period ends (I9).
    //!
    //! *Replay:* freeing a `Retired` table at once does not compile
    //! (`tests/ui/21_retired_table_pte_free.rs`); in this crate the lock lives with the table,
    //! so freeing the table early is freeing its lock early.
    //! [`buggy_lock_of_a_table_freed_at_once`] holds a `pte_offset_map_ro_nolock` map, runs a
    //! PT_RECLAIM that frees the table and its lock at once (laundered through the `unsafe`
    //! `DetachedPmd::from_pmd`), and then takes the lock: the audit reports the free
    //! itself (I9, no grace period since the unlink) and then the access `lock`.
    //! [`fixed_reclaim_keeps_the_lock_until_the_grace_period`] does the same with
    //! `Mmu::madvise_dontneed(.., reclaim = true)` (`pte_free_defer`): the lock is valid, and
    //! [`fixed_nolock_lockers_vs_reclaim`] runs `ro_nolock` lockers against reclaiming zaps.
    //!
    //! *Checked:* with `try_reclaim` (`src/mmu/zap.rs`) freeing the detached table at once, both
    //! fixed tests fail (the concurrent one with `lock` and `read` reports).

    use super::*;
    use typed_pgtable::mmu::AuditRule;
    use typed_pgtable::provenance::{
        InTable, PmdRef, PteRoNolock, pmd_lock, pmdp_collapse_flush, pte_offset_map_lock,
        pte_offset_map_ro_nolock,
    };

    const VA: u64 = BASE + 0x9000;

    /// The scene of both single-thread replays: a nolock user of the table at `VA`, under the
    /// VMA read lock, has mapped it read-only (an RCU section) but not taken its lock yet. `f`
    /// gets the pmd and the map; the VMA lock goes when it returns.
    fn as_nolock_user<'m, R>(
        mmu: &'m Mmu,
        f: impl FnOnce(&PmdRef<'m, '_, Mmu, InTable>, PteRoNolock<'_, Mmu>) -> R,
    ) -> R {
        let vma = mmu.lock_vma_under_rcu(VA).unwrap();
        let pmd = vma.pmd_offset(VA).unwrap().unwrap();
        let ro = pte_offset_map_ro_nolock(&pmd, VA).unwrap();
        f(&pmd, ro)
    }

    #[test]
    fn buggy_lock_of_a_table_freed_at_once() {
        let mmu = mmu_with_page(1024, VmaKind::Anon, VA);
        as_nolock_user(&mmu, |pmd, ro| {
            assert!(ro.pte().is_present());

            // PT_RECLAIM (same thread: nothing here blocks): zap, detach, free at once.
            {
                let pml = pmd_lock(pmd);
                let ptl = pte_offset_map_lock(pmd, VA).unwrap();
                // The clear drops the page's reference (after a grace period).
                ptl.ptep_get_and_clear(VA);
                let retired = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
                drop(pml);
                // A nolock user still has the table mapped and will take its lock.
                free_at_once(&mmu, retired);
            }
            // The free itself breaks I9: no grace period since the unlink.
            assert_eq!(mmu.audit().violations_of(AuditRule::FreeWithoutGrace), 1);
            assert_eq!(mmu.audit().violations_of(AuditRule::UseAfterFree), 0);

            let locked = ro.lock();
            drop(locked);
            assert_reported(&mmu, "lock", "the lock of a freed table was taken");
        });
    }

    #[test]
    fn fixed_reclaim_keeps_the_lock_until_the_grace_period() {
        let mmu = mmu_with_page(1024, VmaKind::Anon, VA);
        let table = as_nolock_user(&mmu, |_, ro| {
            let table = match ro.pmdval().kind() {
                PmdKind::Table(t) => t,
                other => panic!("{other:?}"),
            };

            // PT_RECLAIM under the VMA read lock, same thread: zap, detach, pte_free_defer.
            let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
            assert_eq!(zap.tables_reclaimed, 1);

            let locked = ro.lock();
            assert!(locked.pte().is_none(), "the detached, zapped table");
            drop(locked);
            table
        });
        assert_eq!(mmu.frame_kind(table), Some(FrameKind::Pte));
        assert_clean(&mmu);
        assert_eq!(mmu.frame_kind(table), Some(FrameKind::Free));
    }

    #[test]
    fn fixed_nolock_lockers_vs_reclaim() {
        let mmu = mmu_with_vma(4096, VmaKind::Anon);
        let stop = AtomicBool::new(false);
        let [locks, reclaimed]: [AtomicU64; 2] = Default::default();
        until_work_done(
            &mmu,
            &stop,
            &[
                (&reclaimed, "no table was reclaimed"),
                (&locks, "no nolock user took a lock"),
            ],
            &[],
            |s| {
                spawn_until_stopped(s, &stop, || {
                    for i in 0..4 {
                        let _ = mmu.map_page(BASE + i * PAGE_SIZE);
                    }
                    let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
                    reclaimed.fetch_add(zap.tables_reclaimed, SeqCst);
                });
                for _ in 0..2 {
                    spawn_until_stopped(s, &stop, || {
                        under_mmap_lock(&mmu, BASE, |pmd| {
                            let Ok(ro) = pte_offset_map_ro_nolock(pmd, BASE) else {
                                return;
                            };
                            // Read it locklessly first (the reclaim may run meanwhile) ...
                            let present = ro.entries().filter(|p| p.is_present()).count();
                            // ... then lock it, attached or not.
                            let locked = ro.lock();
                            let present_locked =
                                locked.entries().filter(|p| p.is_present()).count();
                            assert!(present <= 512 && present_locked <= 512);
                            locks.fetch_add(1, SeqCst);
                        });
                    });
                }
            },
        );
    }
}

mod b10_recheck_pmd_state {
    //! **B10 — PT_RECLAIM prerequisites found in review by Jann Horn** (Qi Zheng's "synchronously
    //! scan and reclaim empty user PTE pages", v3/v4, Nov–Dec 2024): "mm: khugepaged: recheck
    //! pmd state in retract_page_tables()", "mm: userfaultfd: recheck dst_pmd entry in
    //! move_pages_pte()", "x86: mm: free page table pages by RCU instead of semi RCU".
    //!
    //! *What went wrong:* once empty tables can be freed under the mmap **read** lock or a VMA
    //! read lock, writers that mapped a table with `pte_offset_map_nolock` and assumed the mmap
    //! lock pinned it could write into a table that had just been detached: the write is lost
    //! (and the table freed after the grace period). They had to add `pmd_same` rechecks under
    //! the PTE lock.
    //!
    //! *Invariant broken:* I4 — `rw_nolock` users must revalidate the pmd under the PTE lock
    //! before writing; and the free domain must match the reader's guard (§6.4).
    //!
    //! *Replay:* writing through an unverified `rw_nolock` lock does not compile
    //! (`tests/ui/14_write_through_unverified_rw_nolock_lock.rs`), nor does
    //! `pmdp_collapse_flush` accept one (`tests/ui/25_collapse_flush_with_unverified_lock.rs`).
    //! [`buggy_write_after_reclaim_is_lost_and_revalidate_refuses`] takes an `rw_nolock`
    //! snapshot, runs a reclaiming `madvise_dontneed` (same thread), and shows `revalidate`
    //! returns `Err(PmdChanged)`; writing anyway (through a forged owner, `unsafe`) installs a
    //! page `translate` never finds. [`fixed_revalidated_writers_vs_reclaim`] runs writers that
    //! install pages through revalidated locks against reclaiming zaps: every page written
    //! through an `Attached` lock is mapped while that lock is held.
    //!
    //! *Checked:* with the `pmd_same` check removed from `PteLocked::revalidate`
    //! (`src/provenance/lock.rs`), both tests fail (the concurrent one with tens to hundreds of
    //! lost writes per run).

    use super::*;
    use typed_pgtable::mmu::Pte;
    use typed_pgtable::provenance::{DetachedPmd, Retired, pte_offset_map_rw_nolock};
    use typed_pgtable::{Error, NoMap};

    const VA: u64 = BASE + 0xb000;

    #[test]
    fn buggy_write_after_reclaim_is_lost_and_revalidate_refuses() {
        let mmu = mmu_with_page(1024, VmaKind::Anon, VA);
        let vma = mmu.lock_vma_under_rcu(VA).unwrap();
        let pmd = vma.pmd_offset(VA).unwrap().unwrap();
        let rw = pte_offset_map_rw_nolock(&pmd, VA).unwrap();
        let snapshot = rw.pmdval();

        // PT_RECLAIM under the VMA read lock (same thread: it only defers its frees).
        let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
        assert_eq!(zap.tables_reclaimed, 1);

        // The lock is `Unverified`: no writes (tests/ui/14); revalidate sees the change.
        let locked = rw.lock();
        let rejected = match locked.revalidate(&pmd) {
            Ok(_) => panic!("revalidated a detached table"),
            Err(r) => r,
        };
        assert_eq!(rejected.error, Error::PmdChanged);

        // What the unchecked write did: the page goes into the detached table.
        let page = mmu.alloc_data_frame().unwrap();
        // SAFETY: deliberately broken (the bug): the table belongs to the reclaim's deferred
        // free; we write into it while our map keeps it alive, and never free it.
        let mut forged = unsafe { DetachedPmd::<Mmu, Retired>::from_pmd(&mmu, snapshot) }.unwrap();
        forged
            .pte_offset_map_mut(VA)
            .set_pte(VA, Pte::anon_page(page.pfn()))
            .unwrap();
        std::mem::forget(forged);
        drop(rejected);
        drop(vma);
        assert_eq!(mmu.translate(VA).unwrap(), None, "the write is lost");
        mmu.rcu_barrier();
        // Only our reference: the lost entry's went with the reclaimed table.
        assert_eq!(mmu.page_refs(page.pfn()), 1, "the page is mapped nowhere");
        assert_eq!(mmu.audit().violations(), 0);
        // The slot is empty; a new walk finds no table rather than the stale one.
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(VA).unwrap().unwrap();
        assert_eq!(pte_offset_map_rw_nolock(&pmd, VA).err(), Some(NoMap::None));
    }

    #[test]
    fn fixed_revalidated_writers_vs_reclaim() {
        let mmu = mmu_with_vma(4096, VmaKind::Anon);
        let stop = AtomicBool::new(false);
        let [writes, rejected, lost, reclaimed]: [AtomicU64; 4] = Default::default();
        until_work_done(
            &mmu,
            &stop,
            &[
                (&writes, "no write was made"),
                (&reclaimed, "no table was reclaimed"),
            ],
            &[(&lost, "a revalidated write went into a detached table")],
            |s| {
                spawn_until_stopped(s, &stop, || {
                    let _ = mmu.map_page(BASE);
                    // Let the writers find the table.
                    wait_for_progress(&writes, writes.load(SeqCst));
                    let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
                    reclaimed.fetch_add(zap.tables_reclaimed, SeqCst);
                });
                for t in 0..2u64 {
                    let (mmu, stop, writes, rejected, lost) =
                        (&mmu, &stop, &writes, &rejected, &lost);
                    s.spawn(move || {
                        let mut i = t;
                        common::until_stopped(stop, || {
                            i += 1;
                            let va = BASE + (8 + i % 16) * PAGE_SIZE;
                            under_mmap_lock(mmu, va, |pmd| {
                                let Ok(rw) = pte_offset_map_rw_nolock(pmd, va) else {
                                    return;
                                };
                                // Work on the snapshot first: the reclaim may run meanwhile.
                                let _ = rw.entries().filter(|p| p.is_present()).count();
                                match rw.lock().revalidate(pmd) {
                                    Ok(ptl) => {
                                        if !ptl.ptep_get(va).is_none() {
                                            return;
                                        }
                                        let page = mmu.alloc_data_frame().unwrap();
                                        ptl.set_pte(va, Pte::anon_page(page.pfn())).unwrap();
                                        // Attached: while this lock is held the table is installed,
                                        // so the write is visible to any walker.
                                        if mmu.translate(va).unwrap() != Some(page.pfn() << 12) {
                                            lost.fetch_add(1, SeqCst);
                                        }
                                        writes.fetch_add(1, SeqCst);
                                    }
                                    Err(_) => {
                                        rejected.fetch_add(1, SeqCst);
                                    }
                                }
                            });
                        });
                    });
                }
            },
        );
        let _ = rejected.load(SeqCst);
    }
}

mod b11_collapse_vs_pt_reclaim {
    //! **B11 — "mm: Fix the race between collapse and PT_RECLAIM under per-vma lock"** (Barry
    //! Song, Aug 2025; fixes `a6fde7add78d` "mm: use per_vma lock for MADV_DONTNEED").
    //!
    //! *What went wrong:* MADV_DONTNEED, and with it PT_RECLAIM, began to run under the per-VMA
    //! read lock, which `collapse_huge_page`'s `mmap_write_lock` does not exclude.
    //! `check_pmd_still_valid()` passed, the reclaim freed the table, `pmdp_collapse_flush`
    //! returned a none pmd, and the failure path re-installed `pmd_populate(mm, pmd,
    //! pmd_pgtable(_pmd))` from it: a bogus pmd (page 0 as a table), later a crash in `exit_mmap`
    //! → `__pte_offset_map_lock`. Fix: `vma_start_write()` before the check.
    //!
    //! *Invariant broken:* the exclusivity token must cover every remover (§6.10), and a
    //! `Detached` value that is not a table must never be published (I7).
    //!
    //! *Replay:* populating from a pmd value needs the `unsafe` `DetachedPmd::from_pmd`
    //! (`tests/ui/32_b6_populate_from_stale_pmd_value.rs`), and even through it the none value
    //! is no table. [`buggy_collapse_without_vma_write_lock_finds_no_table`] writes the collapse
    //! without `vma_start_write` and runs a reclaiming `madvise_dontneed` (under the VMA read
    //! lock, same thread) after its check: the pmd is none, `pte_offset_map_lock` gives
    //! `NoMap::None` (so there is no `Attached` lock to `pmdp_collapse_flush` with), and
    //! `from_pmd` of the none value gives `NoMap::None`. What the C failure path published
    //! (`table_entry(0)`) is classified `Bad`, never mapped, and `check_tables` flags it.
    //! [`fixed_vma_write_lock_excludes_per_vma_readers`] shows what the fix relies on, and
    //! [`fixed_collapse_vs_reclaim_and_refault`] runs `Mmu::collapse_huge_page` against reclaiming
    //! zaps, refaults and lockless walkers.
    //!
    //! *Checked:* removing only `vma_start_write` from `Mmu::collapse_huge_page` does **not**
    //! make the concurrent test fail: the crate's collapse checks the pmd with
    //! `pte_offset_map_lock` under the PMD lock, so a reclaim cannot slip between check and
    //! flush, and there is no way to publish a non-table. Reverting to the C order as well
    //! (check before the PMD lock, a sleep where the kernel takes `anon_vma_lock_write` and
    //! starts the mmu_notifier range, raw flush, restore from the none value) makes it fail
    //! (walkers see the `Bad` pmd); the same C order with `vma_start_write` kept passes.

    use super::*;
    use typed_pgtable::mmu::{CollapseOutcome, table_entry};
    use typed_pgtable::provenance::{DetachedPmd, Retired, pmd_lock, pte_offset_map_lock};
    use typed_pgtable::{Error, NoMap};

    const VA: u64 = BASE + 0xd000;

    #[test]
    fn buggy_collapse_without_vma_write_lock_finds_no_table() {
        let mmu = mmu_with_page(2048, VmaKind::Anon, VA);
        {
            // collapse_huge_page before the fix: mmap write lock, no vma_start_write ...
            let mm = mmu.mmap_write_lock();
            let pmd = mm.pmd_offset(BASE).unwrap().unwrap();
            // ... check_pmd_still_valid() passes ...
            assert!(matches!(pmd.pmd_val().kind(), PmdKind::Table(_)));
            // ... MADV_DONTNEED with PT_RECLAIM under the per-VMA read lock (not excluded by
            // the mmap write lock; same thread, it does not block) ...
            let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
            assert_eq!(zap.tables_reclaimed, 1);
            // ... and the collapse goes on under the PMD lock.
            let pml = pmd_lock(&pmd);
            let now = pml.pmdp_get();
            assert_eq!(
                now.kind(),
                PmdKind::None,
                "pmdp_collapse_flush would return none"
            );
            // No `Attached` PTE lock, so no pmdp_collapse_flush ...
            assert_eq!(pte_offset_map_lock(&pmd, BASE).err(), Some(NoMap::None));
            // ... and the failure path's pmd_pgtable(none) is no table.
            // SAFETY: `from_pmd` refuses a none value before any ownership matters.
            let restore = unsafe { DetachedPmd::<Mmu, Retired>::from_pmd(&mmu, now) };
            assert_eq!(restore.err(), Some(NoMap::None));
        }
        assert_eq!(mmu.audit().violations(), 0);
        assert!(mmu.check_tables().is_empty());

        // What the C failure path published: a table entry for page 0.
        // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
        unsafe { mmu.inject_pmd(BASE, table_entry(0)) }.unwrap();
        {
            let mm = mmu.mmap_read_lock();
            let pmd = mm.pmd_offset(BASE).unwrap().unwrap();
            assert_eq!(pmd.pmd_val().kind(), PmdKind::Bad);
            assert_eq!(pte_offset_map_lock(&pmd, BASE).err(), Some(NoMap::Bad));
        }
        assert_eq!(mmu.translate(VA).unwrap(), None);
        let problems = mmu.check_tables();
        assert!(
            problems.iter().any(|p| p.contains("malformed")),
            "{problems:?}"
        );
        assert_eq!(mmu.audit().violations(), 0, "classified Bad, never mapped");
    }

    #[test]
    fn fixed_vma_write_lock_excludes_per_vma_readers() {
        let mmu = mmu_with_page(2048, VmaKind::Anon, VA);
        {
            let mm = mmu.mmap_write_lock();
            let vw = mm.vma_start_write(BASE).unwrap();
            // MADV_DONTNEED can no longer take the per-VMA lock; it falls back to the mmap
            // lock, which the collapse holds for writing.
            assert!(mmu.lock_vma_under_rcu(BASE).is_none());
            drop(vw);
        }
        assert_eq!(
            mmu.collapse_huge_page(BASE).unwrap(),
            CollapseOutcome::Collapsed
        );
        assert_clean(&mmu);
    }

    /// The collapse itself holds the VMA write lock while it works: with a walker's read
    /// section open, `collapse_huge_page` waits for its grace period after the detach, and
    /// meanwhile no per-VMA reader (PT_RECLAIM's `MADV_DONTNEED`) can lock the VMA. Fails if
    /// the collapse walks under the mmap write lock alone (`vma_start_write` left out), which
    /// the check under the PMD lock would otherwise mask.
    #[test]
    fn fixed_collapse_holds_the_vma_write_lock_while_it_works() {
        let mmu = mmu_with_page(2048, VmaKind::Anon, VA);
        let walker = mmu.rcu_read_lock();
        let excluded = thread::scope(|s| {
            let collapse = s.spawn(|| mmu.collapse_huge_page(BASE));
            // The collapse cannot finish while the section is open, so it keeps whatever it
            // locked; give it up to 20 s to get there (a watchdog, not a timing claim).
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut excluded = false;
            while !excluded && Instant::now() < deadline {
                match mmu.lock_vma_under_rcu(BASE) {
                    Some(reader) => drop(reader),
                    None => excluded = true,
                }
                thread::yield_now();
            }
            drop(walker);
            assert_eq!(
                collapse.join().unwrap().unwrap(),
                CollapseOutcome::Collapsed
            );
            excluded
        });
        assert!(
            excluded,
            "a per-VMA reader locked the VMA during the collapse"
        );
        assert_clean(&mmu);
    }

    #[test]
    fn fixed_collapse_vs_reclaim_and_refault() {
        let mmu = mmu_with_vma(8192, VmaKind::Anon);
        let race = Race::new(&mmu, 1, 1);
        let [collapses, reclaimed]: [AtomicU64; 2] = Default::default();
        race.run(
            |s| {
                spawn_until_stopped(s, &race.stop, || match mmu.collapse_huge_page(BASE) {
                    Ok(CollapseOutcome::Collapsed) => {
                        collapses.fetch_add(1, SeqCst);
                    }
                    Ok(_) | Err(Error::NotMapped { .. }) | Err(Error::OutOfFrames { .. }) => {
                        thread::yield_now()
                    }
                    Err(e) => panic!("collapse_huge_page: {e}"),
                });
                spawn_until_stopped(s, &race.stop, || {
                    let zap = mmu.madvise_dontneed(BASE, PMD_SIZE, true).unwrap();
                    reclaimed.fetch_add(zap.tables_reclaimed, SeqCst);
                    thread::sleep(Duration::from_micros(50));
                });
                spawn_until_stopped(s, &race.stop, refault_round(&mmu, BASE));
            },
            &[
                (&collapses, "no collapse ran"),
                (&reclaimed, "no table was reclaimed"),
            ],
        );
    }
}
