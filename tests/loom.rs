//! Loom model checks of the three page-table protocols the crate's types encode, each next to
//! a mutated protocol that loom must reject.
//!
//! - **(a) lockless walk vs retract with deferred free.** A GUP-fast style walker opens an RCU
//!   read section, reads the pmd slot and reads the PTE table it names; the remover clears the
//!   slot, waits a grace period and frees the table (a poison write).
//! - **(b) `pte_offset_map_lock` vs retract.** The walker reads the slot, takes the PTE lock
//!   of the table it names and rechecks that the slot still names it (`pmd_same`) before it
//!   writes, else unlocks and retries; the remover detaches the table under its PTE lock,
//!   installs a replacement, and frees the old table after a grace period.
//! - **(c) publication.** The writer fills a fresh table and then publishes it with a Release
//!   store; a walker that sees the pmd must see the filled table.
//!
//! The RCU is [`TinyRcu`] (why not crossbeam-epoch: see its module docs), built on the
//! `typed_pgtable::sync` shim, so loom sees every atomic access and fence. Table memory is a
//! `loom::cell::UnsafeCell` and "free" is a `with_mut` write of [`POISON`]: a use-after-free is
//! reported as a causality violation without real UB in the test process (the real drop
//! happens when the last `Arc` goes, after the join).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom`.
//! `LOOM_MAX_PREEMPTIONS` defaults to 2 here (unset it rather than leaving it empty: loom
//! panics on an empty value). Each model prints one line to stderr with its interleaving
//! count and wall time.
#![cfg(loom)]

mod loom_common;
#[path = "common/loom_threads.rs"]
mod loom_threads;
/// The split PTE lock: a test-and-set spinlock, as `mmu::spin::SpinLock`.
#[path = "common/spin.rs"]
mod spin;

use loom::sync::Arc;
use loom_common::Tally;
use loom_threads::{Walkers, check_tallied};
use spin::SpinLock;
use typed_pgtable::rcu::tiny::TinyRcu;
use typed_pgtable::sync::{AtomicUsize, Ordering, UnsafeCell};

/// The contents of a live PTE table.
const FILLED: u64 = 0x600d_600d;
/// What a freed table holds (the in-memory MMU poisons freed frames the same way).
const POISON: u64 = 0xdead_dead;

// ---------------------------------------------------------------------------------------------
// (a) Lockless walker vs retract with deferred free.
// ---------------------------------------------------------------------------------------------

/// Mutations of protocol (a).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FreeBug {
    /// The correct protocol.
    None,
    /// The remover frees right after clearing the slot, without waiting a grace period.
    NoGracePeriod,
    /// The walker reads the pmd slot *before* it opens its read section (a copied pmd used
    /// under a guard taken later: what `CopiedUnderRcu<'g>` makes impossible to express).
    LoadBeforeReadLock,
    /// The RCU's reader omits its `fence(SeqCst)`: the remover's slot scan can miss a reader
    /// that already saw the table.
    ReaderFenceMissing,
}

/// One pmd slot naming one PTE table.
struct Retract {
    rcu: TinyRcu,
    /// The pmd: 1 = names `table`, 0 = none.
    pmd: AtomicUsize,
    table: UnsafeCell<[u64; 2]>,
}

// SAFETY: `table` is read by walkers inside read sections and written (freed) by the remover
// only after a grace period; that is exactly what the model checks.
unsafe impl Sync for Retract {}

fn read_table(s: &Retract) {
    // SAFETY: this is the access whose safety loom checks (a race is a causality violation).
    let entries = s.table.with(|p| unsafe { *p });
    assert_ne!(
        entries, [POISON; 2],
        "lockless walker read a freed PTE table"
    );
    assert_eq!(entries, [FILLED; 2]);
}

/// Outcomes of a lockless walk.
const SAW_NONE: usize = 0;
const READ_TABLE: usize = 1;

/// Returns [`SAW_NONE`] or [`READ_TABLE`].
fn lockless_walker(s: &Retract, reader: usize, bug: FreeBug) -> usize {
    let pmd = match bug {
        FreeBug::LoadBeforeReadLock => {
            let pmd = s.pmd.load(Ordering::Acquire);
            s.rcu.read_lock(reader);
            pmd
        }
        _ => {
            if bug == FreeBug::ReaderFenceMissing {
                s.rcu.read_lock_without_fence(reader);
            } else {
                s.rcu.read_lock(reader);
            }
            // pmdp_get_lockless, then pte_offset_map on the copy.
            s.pmd.load(Ordering::Acquire)
        }
    };
    let outcome = if pmd != 0 {
        read_table(s);
        READ_TABLE
    } else {
        SAW_NONE
    };
    s.rcu.read_unlock(reader);
    outcome
}

fn model_a(name: &'static str, bug: FreeBug, walkers: usize) -> Tally {
    check_tallied(name, move |t| {
        let s = Arc::new(Retract {
            rcu: TinyRcu::new(),
            pmd: AtomicUsize::new(1),
            table: UnsafeCell::new([FILLED; 2]),
        });
        let walkers = Walkers::spawn(&s, walkers, move |s, reader| {
            lockless_walker(s, reader, bug)
        });
        // The remover (single, so its PMD and PTE locks are implicit): pmdp_collapse_flush,
        // then pte_free_defer.
        s.pmd.store(0, Ordering::Release);
        if bug != FreeBug::NoGracePeriod {
            s.rcu.synchronize();
        }
        // SAFETY: the free whose ordering loom checks.
        s.table.with_mut(|p| unsafe { *p = [POISON; 2] });
        for outcome in walkers.join() {
            t.hit(outcome);
        }
    })
}

#[test]
fn a_lockless_walk_vs_deferred_free() {
    let tally = model_a(
        "(a) 2 lockless walkers vs retract + synchronize",
        FreeBug::None,
        2,
    );
    // Both sides of the race were explored: walkers that read the table the remover was
    // about to free, and walkers that found the slot already cleared.
    assert!(tally.get(READ_TABLE) > 0 && tally.get(SAW_NONE) > 0);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn a_mutation_free_without_grace_period() {
    model_a(
        "(a) mutation: free without grace period",
        FreeBug::NoGracePeriod,
        1,
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn a_mutation_pmd_read_before_read_lock() {
    model_a(
        "(a) mutation: pmd read before rcu_read_lock",
        FreeBug::LoadBeforeReadLock,
        1,
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn a_mutation_reader_fence_missing() {
    model_a(
        "(a) mutation: reader fence(SeqCst) missing",
        FreeBug::ReaderFenceMissing,
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// (b) pte_offset_map_lock's lock-recheck-retry loop vs retract.
// ---------------------------------------------------------------------------------------------

/// Mutations of protocol (b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockBug {
    /// The correct protocol: snapshot, lock, recheck under the lock, else retry.
    None,
    /// The walker trusts its snapshot once it holds the lock (no `pmd_same` recheck).
    SkipRecheck,
    /// The walker rechecks *before* taking the lock, so the recheck proves nothing about the
    /// moment the lock is held.
    RecheckBeforeLock,
}

/// How the split PTE lock is modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockKind {
    /// The crate's test-and-set spinlock (Acquire CAS, Release store, `yield_now` in the spin).
    Spin,
    /// `loom::sync::Mutex`, which blocks. Used when two walkers contend: with two threads
    /// spinning (a walker on the lock, the remover in `synchronize`) loom explores them
    /// yielding to each other without bound and gives up ("Model exceeded maximum number of
    /// branches"), while the lock's ordering, all the protocol relies on, is the same.
    Blocking,
}

/// The split PTE lock of one table.
enum Ptl {
    Spin(SpinLock),
    Blocking(loom::sync::Mutex<()>),
}

/// A held [`Ptl`]; unlocks on drop.
enum PtlGuard<'a> {
    Spin(&'a SpinLock),
    Blocking(#[allow(dead_code, reason = "held for its Drop")] loom::sync::MutexGuard<'a, ()>),
}

impl Ptl {
    fn new(kind: LockKind) -> Self {
        match kind {
            LockKind::Spin => Ptl::Spin(SpinLock::new()),
            LockKind::Blocking => Ptl::Blocking(loom::sync::Mutex::new(())),
        }
    }

    fn lock(&self) -> PtlGuard<'_> {
        match self {
            Ptl::Spin(l) => {
                l.lock();
                PtlGuard::Spin(l)
            }
            Ptl::Blocking(m) => PtlGuard::Blocking(m.lock().unwrap()),
        }
    }
}

impl Drop for PtlGuard<'_> {
    fn drop(&mut self) {
        if let PtlGuard::Spin(l) = self {
            l.unlock();
        }
    }
}

/// A PTE table: its split lock, one entry, and whether it has been detached from its slot.
struct PteTable {
    ptl: Ptl,
    entry: UnsafeCell<u64>,
    /// Written only under `ptl`, by the remover.
    detached: UnsafeCell<bool>,
}

impl PteTable {
    fn new(lock: LockKind) -> Self {
        PteTable {
            ptl: Ptl::new(lock),
            entry: UnsafeCell::new(FILLED),
            detached: UnsafeCell::new(false),
        }
    }
}

/// One pmd slot and two tables: `tables[0]` is installed, `tables[1]` replaces it.
struct Collapse {
    rcu: TinyRcu,
    /// The pmd: 0 = none, `i + 1` = names `tables[i]`.
    pmd: AtomicUsize,
    tables: [PteTable; 2],
}

// SAFETY: `entry` is written under `ptl` while the table is attached and by the remover after a
// grace period; `detached` is accessed under `ptl`. The model checks exactly this.
unsafe impl Sync for Collapse {}

/// How often the walker may find the slot changed under it before the model calls it a
/// livelock; one retract can cause at most one retry.
const MAX_ATTEMPTS: usize = 3;

/// Outcomes of `map_lock_and_write`.
const WROTE_OLD: usize = 0;
const WROTE_NEW: usize = 1;
const RETRIED: usize = 2;

/// `pte_offset_map_lock` + a PTE write + `pte_unmap_unlock`. Returns the number of attempts
/// and the index of the table written.
fn map_lock_and_write(s: &Collapse, reader: usize, bug: LockBug) -> (usize, usize) {
    for attempt in 1..=MAX_ATTEMPTS {
        s.rcu.read_lock(reader);
        let pmd = s.pmd.load(Ordering::Acquire);
        assert_ne!(pmd, 0, "the slot always names a table in this model");
        let table = &s.tables[pmd - 1];
        let early_same = bug == LockBug::RecheckBeforeLock && s.pmd.load(Ordering::Acquire) == pmd;
        let ptl = table.ptl.lock();
        let same = match bug {
            // Relaxed is enough: the remover changes the slot only under this lock.
            LockBug::None => s.pmd.load(Ordering::Relaxed) == pmd,
            LockBug::SkipRecheck => true,
            LockBug::RecheckBeforeLock => early_same,
        };
        if same {
            // With the correct protocol the table is attached here: the slot names it, and it
            // cannot leave while we hold its lock. The mutations get here without that proof.
            // SAFETY: `detached` is written only under `ptl`, which we hold.
            let detached = table.detached.with(|d| unsafe { *d });
            assert!(
                !detached,
                "pte_offset_map_lock wrote to a detached PTE table"
            );
            // SAFETY: the write whose ordering loom checks.
            table.entry.with_mut(|e| unsafe {
                assert_ne!(*e, POISON, "pte_offset_map_lock wrote to a freed PTE table");
                *e += 1;
            });
            drop(ptl);
            s.rcu.read_unlock(reader);
            return (attempt, pmd - 1);
        }
        // Removed or replaced between the read and the lock: unlock, unmap, go again.
        drop(ptl);
        s.rcu.read_unlock(reader);
    }
    panic!("pte_offset_map_lock made no progress in {MAX_ATTEMPTS} attempts");
}

fn model_b(name: &'static str, bug: LockBug, lock: LockKind, walkers: usize) -> Tally {
    check_tallied(name, move |t| {
        let s = Arc::new(Collapse {
            rcu: TinyRcu::new(),
            pmd: AtomicUsize::new(1),
            tables: [PteTable::new(lock), PteTable::new(lock)],
        });
        let walkers = Walkers::spawn(&s, walkers, move |s, reader| {
            map_lock_and_write(s, reader, bug)
        });
        // The remover (single, so the PMD lock is implicit): take the old table's PTE lock,
        // swap the slot to the replacement (filled before the threads started), mark the old
        // one detached, unlock, and free it after a grace period.
        let old = &s.tables[0];
        let ptl = old.ptl.lock();
        s.pmd.store(2, Ordering::Release);
        // SAFETY: under `ptl`.
        old.detached.with_mut(|d| unsafe { *d = true });
        drop(ptl);
        s.rcu.synchronize();
        // SAFETY: the free whose ordering loom checks.
        old.entry.with_mut(|e| unsafe { *e = POISON });
        for (attempts, wrote) in walkers.join() {
            assert!(attempts <= 2, "one retract caused {attempts} attempts");
            t.hit(wrote);
            if attempts > 1 {
                t.hit(RETRIED);
            }
        }
    })
}

#[test]
fn b_map_lock_recheck_retry_vs_retract() {
    let tally = model_b(
        "(b) pte_offset_map_lock walker vs retract",
        LockBug::None,
        LockKind::Spin,
        1,
    );
    // Explored: a write to the old table before the retract, a walker whose snapshot went
    // stale under the lock and retried, and a write to the replacement.
    assert!(tally.get(WROTE_OLD) > 0 && tally.get(RETRIED) > 0 && tally.get(WROTE_NEW) > 0);
}

#[test]
fn b_two_walkers_map_lock_vs_retract() {
    let tally = model_b(
        "(b) 2 pte_offset_map_lock walkers vs retract",
        LockBug::None,
        LockKind::Blocking,
        2,
    );
    assert!(tally.get(WROTE_OLD) > 0 && tally.get(RETRIED) > 0 && tally.get(WROTE_NEW) > 0);
}

#[test]
#[should_panic(expected = "wrote to a detached PTE table")]
fn b_mutation_skip_recheck() {
    model_b(
        "(b) mutation: no pmd_same recheck",
        LockBug::SkipRecheck,
        LockKind::Spin,
        1,
    );
}

#[test]
#[should_panic(expected = "wrote to a detached PTE table")]
fn b_mutation_recheck_before_lock() {
    model_b(
        "(b) mutation: recheck before the lock",
        LockBug::RecheckBeforeLock,
        LockKind::Spin,
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Table publication.
// ---------------------------------------------------------------------------------------------

/// Mutations of protocol (c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PublishBug {
    /// The correct protocol: fill, then a Release store of the pmd; Acquire load by walkers.
    None,
    /// The pmd is stored Relaxed.
    RelaxedPublish,
    /// The pmd is stored (Release) before the table is filled.
    PublishBeforeFill,
    /// The walker loads the pmd Relaxed.
    RelaxedWalkerLoad,
}

/// An empty pmd slot and a fresh table.
struct Publish {
    pmd: AtomicUsize,
    table: UnsafeCell<[u64; 2]>,
}

// SAFETY: `table` is written only before it is published and read only after; the model checks
// exactly this.
unsafe impl Sync for Publish {}

/// Outcomes of a walk in model (c).
const UNPUBLISHED: usize = 0;
const PUBLISHED: usize = 1;

fn model_c(name: &'static str, bug: PublishBug, walkers: usize) -> Tally {
    check_tallied(name, move |t| {
        let s = Arc::new(Publish {
            pmd: AtomicUsize::new(0),
            table: UnsafeCell::new([0; 2]),
        });
        let walkers = Walkers::spawn(&s, walkers, move |s, _| {
            let order = if bug == PublishBug::RelaxedWalkerLoad {
                Ordering::Relaxed
            } else {
                Ordering::Acquire
            };
            if s.pmd.load(order) == 0 {
                return UNPUBLISHED;
            }
            // SAFETY: the read whose ordering loom checks.
            let entries = s.table.with(|p| unsafe { *p });
            assert_eq!(entries, [FILLED; 2], "walker saw an unfilled PTE table");
            PUBLISHED
        });
        // The installer (pmd_populate): fill the fresh table, then publish it.
        // SAFETY: the writes whose ordering loom checks.
        let fill = || s.table.with_mut(|p| unsafe { *p = [FILLED; 2] });
        match bug {
            PublishBug::PublishBeforeFill => {
                s.pmd.store(1, Ordering::Release);
                fill();
            }
            PublishBug::RelaxedPublish => {
                fill();
                s.pmd.store(1, Ordering::Relaxed);
            }
            PublishBug::None | PublishBug::RelaxedWalkerLoad => {
                fill();
                s.pmd.store(1, Ordering::Release);
            }
        }
        for outcome in walkers.join() {
            t.hit(outcome);
        }
    })
}

#[test]
fn c_publication() {
    let tally = model_c(
        "(c) 2 walkers vs fill + Release publish",
        PublishBug::None,
        2,
    );
    assert!(tally.get(PUBLISHED) > 0 && tally.get(UNPUBLISHED) > 0);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn c_mutation_relaxed_publish() {
    model_c(
        "(c) mutation: Relaxed publish",
        PublishBug::RelaxedPublish,
        1,
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn c_mutation_publish_before_fill() {
    model_c(
        "(c) mutation: publish before fill",
        PublishBug::PublishBeforeFill,
        1,
    );
}

#[test]
#[should_panic(expected = "Causality violation")]
fn c_mutation_relaxed_walker_load() {
    model_c(
        "(c) mutation: Relaxed walker load",
        PublishBug::RelaxedWalkerLoad,
        1,
    );
}
