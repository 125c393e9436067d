//! The lock checker: lockdep for the in-memory MMU.
//!
//! # The model
//!
//! Every thread keeps the list of the MMU locks it holds, in the order it took them, each with
//! its class, its instance (which table, which VMA) and where it was taken; the RCU backend
//! keeps the thread's open read sections the same way
//! ([`EpochRcu::section_open_here`](crate::rcu::EpochRcu::section_open_here)). Before a lock
//! call blocks, the checker looks at that list and reports what would deadlock:
//!
//! | rule | what | why it deadlocks |
//! |---|---|---|
//! | sleeping lock inside a read section (I1, I9) | the mmap, rmap or a VMA write lock taken while an RCU read section of the same MMU is open | a holder of that lock may be waiting for a grace period, which waits for this section |
//! | recursive locking | a lock of the same instance (the mmap lock, one VMA, one PMD or PTE table) the thread already holds | it waits for itself (an rwsem read recursion waits behind a queued writer) |
//! | lock order (I10) | a lock of a class that comes *before* one already held: mmap → VMA → rmap → PMD → PTE | two threads taking them in opposite orders wait for each other |
//!
//! A trylock never blocks, so it is never an inversion: PT_RECLAIM's `pmd_trylock` under a
//! PTE lock is allowed, as in the kernel. Grace-period waits (`synchronize`, `rcu_barrier`)
//! inside a read section of their domain are reported by the RCU backend itself.
//!
//! A report is a typed [`Error::LockViolation`] where the call returns a `Result` (every MMU
//! operation), and otherwise (a bare `mmap_read_lock()`, `pmd_lock(&pmd)`) a panic with the
//! same message, naming the rule and both sites, the way lockdep prints the two stacks.
//!
//! The checker is on by default (feature `lock-checker`, part of the default `std` build). It
//! costs a thread-local list update per lock and unlock and a scan of the (short) list before
//! each blocking lock: about 225 instructions per lock taken and released, 0.8 % of the
//! instructions of a one-thread torture run (measured with callgrind; `docs/reliability.md`,
//! "The lock checker's cost"). Lockless walks take no lock and pay nothing. Build with
//! `default-features = false, features = ["std"]` to turn it off.

// Without the checker the bookkeeping types stay, unused.
#![cfg_attr(not(feature = "lock-checker"), allow(dead_code))]

use crate::error::Error;
use core::panic::Location;
use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::vec::Vec;

/// The classes of MMU locks, in the order they are taken (rule I10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockClass {
    /// The mmap lock (`mmap_lock`), read or write.
    Mmap,
    /// A VMA lock (`vma_start_read`/`vma_start_write`).
    Vma,
    /// The rmap lock of the file mapping (`i_mmap_rwsem`).
    Rmap,
    /// A PMD table's split lock (`pmd_lock`).
    Pmd,
    /// A PTE table's split lock (`pte_lockptr`).
    Pte,
}

impl LockClass {
    /// Whether taking it may sleep (spinlocks do not: they are allowed in read sections).
    fn sleeps(self) -> bool {
        matches!(self, LockClass::Mmap | LockClass::Vma | LockClass::Rmap)
    }
}

/// How a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// Waits until it gets the lock.
    Blocking,
    /// Never waits (a trylock, `lock_vma_under_rcu`): no deadlock to report.
    Try,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    mmu: u64,
    class: LockClass,
    instance: u64,
    at: &'static Location<'static>,
}

std::thread_local! {
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

fn with_held<R>(f: impl FnOnce(&mut Vec<Held>) -> R) -> Option<R> {
    HELD.try_with(|h| h.try_borrow_mut().ok().map(|mut h| f(&mut h)))
        .ok()
        .flatten()
}

/// Checks that taking the lock (`class`, `instance`) of MMU `mmu` here cannot deadlock.
///
/// `section` is where an RCU read section of the same MMU is open on this thread, if one is.
#[cfg(feature = "lock-checker")]
pub(crate) fn check(
    mmu: u64,
    class: LockClass,
    instance: u64,
    how: How,
    section: Option<&'static Location<'static>>,
    at: &'static Location<'static>,
) -> Result<(), Error> {
    if how == How::Try {
        return Ok(());
    }
    COUNTS.checks.fetch_add(1, Relaxed);
    if class.sleeps() {
        if let Some(section) = section {
            COUNTS.sleeping_in_section.fetch_add(1, Relaxed);
            return Err(Error::LockViolation {
                rule: match class {
                    LockClass::Mmap => {
                        "I1/I9: the mmap lock (a sleeping lock) taken inside an RCU read section; \
                         a writer holding it may wait for a grace period, which waits for this \
                         section"
                    }
                    LockClass::Vma => {
                        "I1/I9: a VMA write lock (it waits) taken inside an RCU read section"
                    }
                    _ => "I1/I9: the rmap lock (a sleeping lock) taken inside an RCU read section",
                },
                held_at: section,
                taken_at: at,
            });
        }
    }
    let found = with_held(|held| {
        held.iter().filter(|h| h.mmu == mmu).find_map(|h| {
            if h.class == class && h.instance == instance {
                COUNTS.recursion.fetch_add(1, Relaxed);
                Some((recursion_rule(class), h.at))
            } else if h.class > class {
                COUNTS.order.fetch_add(1, Relaxed);
                Some((inversion_rule(h.class, class), h.at))
            } else {
                None
            }
        })
    })
    .flatten();
    match found {
        Some((rule, held_at)) => Err(Error::LockViolation {
            rule,
            held_at,
            taken_at: at,
        }),
        None => Ok(()),
    }
}

/// With the checker compiled out, nothing is checked.
#[cfg(not(feature = "lock-checker"))]
pub(crate) fn check(
    _: u64,
    _: LockClass,
    _: u64,
    _: How,
    _: Option<&'static Location<'static>>,
    _: &'static Location<'static>,
) -> Result<(), Error> {
    Ok(())
}

fn recursion_rule(class: LockClass) -> &'static str {
    match class {
        LockClass::Mmap => {
            "recursive locking: the mmap lock taken again by the thread that holds it (a read \
             lock waits behind a queued writer, a write lock for itself)"
        }
        LockClass::Vma => "recursive locking: a VMA lock taken again by the thread that holds it",
        LockClass::Rmap => {
            "recursive locking: the rmap lock taken again by the thread that holds it"
        }
        LockClass::Pmd => {
            "recursive locking: the PMD lock of a table this thread already holds (one lock \
             covers the whole PMD table)"
        }
        LockClass::Pte => "recursive locking: the PTE lock of a table this thread already holds",
    }
}

fn inversion_rule(held: LockClass, taken: LockClass) -> &'static str {
    // The table is small and fixed: one message per inverted pair.
    match (held, taken) {
        (LockClass::Pte, LockClass::Pmd) => {
            "I10 lock order: a PMD lock taken (blocking) while holding a PTE lock; only a \
             trylock may invert this order (PT_RECLAIM)"
        }
        (LockClass::Pte | LockClass::Pmd, LockClass::Mmap) => {
            "I10 lock order: the mmap lock taken while holding a page-table lock"
        }
        (LockClass::Pte | LockClass::Pmd, LockClass::Vma) => {
            "I10 lock order: a VMA lock taken while holding a page-table lock"
        }
        (LockClass::Pte | LockClass::Pmd, LockClass::Rmap) => {
            "I10 lock order: the rmap lock taken while holding a page-table lock"
        }
        (LockClass::Rmap, LockClass::Mmap) => {
            "I10 lock order: the mmap lock taken while holding the rmap lock"
        }
        (LockClass::Rmap, LockClass::Vma) => {
            "I10 lock order: a VMA lock taken while holding the rmap lock"
        }
        _ => "I10 lock order: the mmap lock taken while holding a VMA lock",
    }
}

/// The instance under which an exclusive token (`detach_range`) is recorded: a pseudo-lock
/// of the mmap class, distinct from the mmap lock itself (instance 0).
pub(crate) const EXCLUSIVE: u64 = 1;

/// Whether this thread holds the lock (`class`, `instance`) of MMU `mmu` (always `false`
/// without the checker).
pub(crate) fn holds(mmu: u64, class: LockClass, instance: u64) -> bool {
    cfg!(feature = "lock-checker")
        && with_held(|held| {
            held.iter()
                .any(|h| h.mmu == mmu && h.class == class && h.instance == instance)
        })
        .unwrap_or(false)
}

/// Records that this thread took the lock.
pub(crate) fn acquired(mmu: u64, class: LockClass, instance: u64, at: &'static Location<'static>) {
    if cfg!(feature = "lock-checker") {
        with_held(|held| {
            held.push(Held {
                mmu,
                class,
                instance,
                at,
            })
        });
    }
}

/// Records that this thread released the lock (the innermost entry of that instance).
pub(crate) fn released(mmu: u64, class: LockClass, instance: u64) {
    if cfg!(feature = "lock-checker") {
        with_held(|held| {
            if let Some(i) = held
                .iter()
                .rposition(|h| h.mmu == mmu && h.class == class && h.instance == instance)
            {
                held.remove(i);
            }
        });
    }
}

/// What the lock checker has checked and reported in this process, per rule.
///
/// The counts are process-wide (all MMUs, all threads), so a test that asserts on them must
/// compare before and after its own calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockCheckerStats {
    /// Blocking lock calls checked.
    pub checks: u64,
    /// Sleeping locks taken inside an RCU read section (I1/I9).
    pub sleeping_in_section: u64,
    /// Grace-period waits (`synchronize`, `rcu_barrier`) inside a read section of their
    /// domain (I9).
    pub grace_period_in_section: u64,
    /// Locks taken again by the thread that holds them.
    pub recursion: u64,
    /// Lock-order inversions between classes (I10).
    pub order: u64,
    /// Read sections still open when their MMU was dropped (leaked, not waited for).
    pub leaked_sections: u64,
}

impl LockCheckerStats {
    /// Reports of every rule together.
    pub fn reports(&self) -> u64 {
        self.sleeping_in_section
            + self.grace_period_in_section
            + self.recursion
            + self.order
            + self.leaked_sections
    }
}

struct Counts {
    checks: AtomicU64,
    sleeping_in_section: AtomicU64,
    grace_period_in_section: AtomicU64,
    recursion: AtomicU64,
    order: AtomicU64,
    leaked_sections: AtomicU64,
}

static COUNTS: Counts = Counts {
    checks: AtomicU64::new(0),
    sleeping_in_section: AtomicU64::new(0),
    grace_period_in_section: AtomicU64::new(0),
    recursion: AtomicU64::new(0),
    order: AtomicU64::new(0),
    leaked_sections: AtomicU64::new(0),
};

/// The lock checker's counts so far (all zero without the checker, but for leaked sections,
/// which `Mmu::drop` reports either way).
pub fn stats() -> LockCheckerStats {
    LockCheckerStats {
        checks: COUNTS.checks.load(Relaxed),
        sleeping_in_section: COUNTS.sleeping_in_section.load(Relaxed),
        grace_period_in_section: COUNTS.grace_period_in_section.load(Relaxed),
        recursion: COUNTS.recursion.load(Relaxed),
        order: COUNTS.order.load(Relaxed),
        leaked_sections: COUNTS.leaked_sections.load(Relaxed),
    }
}

/// Counts a grace-period wait inside a read section (the RCU backend reports it).
pub(crate) fn count_grace_period_in_section() {
    COUNTS.grace_period_in_section.fetch_add(1, Relaxed);
}

/// How many leaked read sections `Mmu::drop` has reported in this process.
pub fn leaked_sections_reported() -> u64 {
    COUNTS.leaked_sections.load(Relaxed)
}

/// `Mmu::drop`'s report of a read section that will never end.
pub(crate) fn report_leaked_section(where_: &str) {
    COUNTS.leaked_sections.fetch_add(1, Relaxed);
    std::eprintln!(
        "lock checker: an RCU read section of a dropped MMU is still open ({where_}): it was \
         leaked (mem::forget of a guard or map), so its grace period never ends; the memory it \
         holds is leaked instead of waited for"
    );
}

/// Panics with the report: for lock calls that return no `Result`.
#[track_caller]
pub(crate) fn or_report(checked: Result<(), Error>) {
    if let Err(e) = checked {
        panic!("lock checker: {e}");
    }
}
