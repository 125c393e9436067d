//! Loom model checks of the crate's own code: loom drives the real `pte_offset_map`,
//! `pte_offset_map_lock`, `pmd_lock`, `pmdp_collapse_flush`, `DetachedPmd::pte_free_defer`,
//! `DetachedPmd::pte_alloc_one` and `DetachedPmd::pmd_populate` over a small backend, so that a
//! mutation of `src/provenance/` (or of the tiny RCU under it) makes a model fail.
//!
//! # The model
//!
//! `tests/loom.rs` re-implements the three protocols by hand, next to mutations of them; it
//! proves the protocols, not the crate. Here the protocol code is the crate's: each thread is a
//! sequence of public API calls, exactly what a caller writes, and the only hand-written code
//! is the backend under it ([`LoomPgtable`], written against `PgtableBackend` from outside
//! the crate like `tests/foreign_backend.rs`). The backend is small enough for loom to explore
//! every interleaving within the preemption bound, and honest enough to report every way the
//! provenance layer could misuse it:
//!
//! - **One pmd slot and two PTE tables of two entries.** The slot, the PTEs, the PMD lock and
//!   the split PTE locks are `typed_pgtable::sync` atomics (loom's under `--cfg loom`), with
//!   the orderings a kernel uses: Acquire slot loads, Release `pmd_populate`, Relaxed PTE
//!   accesses (`READ_ONCE`/`WRITE_ONCE`), Acquire/Release test-and-set locks.
//! - **Table memory is a `sync::UnsafeCell`** holding the table's allocation state. Every
//!   access through a map (`pte_map`, `ptep_get`, `set_pte`, the PTE lock) reads it with `with`;
//!   `pte_alloc_one` writes it (the zeroing of a fresh frame) and a free writes [`POISON`] into
//!   it with `with_mut`. A free that is not ordered after every access of every walker, or an
//!   access to a table that is not yet published, is a loom "Causality violation"; a sequential
//!   access after a free trips the `assert` on the poison. Nothing is freed for real until the
//!   model ends, so the test process has no undefined behaviour.
//! - **Writes check attachment.** A `set_pte` through a lock of a table in a slot
//!   ([`MapKind::MapLock`]) panics with "set_pte into a detached PTE table" unless the slot
//!   names that table and its PTE lock is held: the promise of the `Attached` state.
//! - **The RCU is `rcu::tiny::TinyRcuDomain`**, the crate's `TinyRcu` as an
//!   `RcuDomain`: each section claims a reader slot, `call_rcu` queues the callback,
//!   and `rcu_barrier` waits a grace period and runs what was queued. The remover calls it
//!   after `pte_free_defer`, so the deferred free happens inside the model, where loom sees it.
//!
//! The models (each test's doc comment says what it proves):
//!
//! - `map_vs_retract`: a lockless walker (`pte_offset_map` on an `InTable` pmd, case 3) vs
//!   a remover doing `pmd_lock` + `pte_offset_map_lock` + `pmdp_collapse_flush` +
//!   `pte_free_defer` + a grace period;
//! - `copied_map_vs_retract`: the same with a GUP-fast style walker (`pmdp_get_lockless`
//!   under its own guard, then `pte_offset_map` on the copy, case 2);
//! - `two_walkers_vs_retract`: both walkers at once against the remover (three threads);
//! - `map_lock_vs_retract_and_replace`: a `pte_offset_map_lock` writer vs a remover that
//!   also installs a replacement table before it frees the old one;
//! - `walker_and_writer_vs_retract_and_replace`: a lockless walker and that writer at once
//!   against that remover (three threads);
//! - `populate_vs_map`: `pte_alloc_one`, a fill through the owned map and `pmd_populate`
//!   under the PMD lock vs both kinds of lockless walker, which must see the filled entry.
//!
//! `scripts/mutants/loom/*.patch` holds mutations of `src/` these models reject, one patch per
//! mutant for `patch -p1` from the repository root (`scripts/mutants.sh` applies those in its
//! table to a scratch copy and runs this file): the slot read before the RCU section opens,
//! `pte_offset_map_lock` without its `pmd_same` recheck, `pte_free_defer` freeing at once,
//! and weakened orderings, missing fences or an early free in the tiny RCU.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_crate`.
//! `LOOM_MAX_PREEMPTIONS` defaults to 2 (unset it rather than leaving it empty). Each model
//! prints one line to stderr with its interleaving count and wall time.
#![cfg(loom)]

mod loom_common;
#[path = "common/loom_threads.rs"]
mod loom_threads;
#[path = "common/spin.rs"]
mod spin;

use loom::sync::Arc;
use loom_common::Tally;
use loom_threads::{Walkers, check_tallied};
use spin::SpinLock;
use typed_pgtable::NoMap;
use typed_pgtable::provenance::{
    DetachedPmd, InTable, InstallLock, MapKind, PgtableBackend, PgtableError, PmdRef, WalkLock,
    pmd_lock, pmdp_collapse_flush, pmdp_get_lockless, pte_offset_map, pte_offset_map_lock,
};
use typed_pgtable::rcu::RcuDomain;
use typed_pgtable::rcu::tiny::TinyRcuDomain;
use typed_pgtable::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering, UnsafeCell};

/// PTE tables in the pool.
const TABLES: usize = 2;
/// Entries per PTE table.
const PTES: usize = 2;
/// The memory of a table nobody allocated yet.
const UNUSED: u64 = 0;
/// The memory of an allocated table.
const LIVE: u64 = 0x600d_600d;
/// The memory of a freed table (the in-memory MMU poisons freed frames the same way).
const POISON: u64 = 0xdead_dead;
/// The address every model maps (entry 1 of its table).
const ADDR: u64 = 0x1000;
/// The PTE the first table holds at [`ADDR`] (the backend gives PTEs no meaning).
const PTE_OLD: u64 = 0xa001;
/// The PTE a replacement table holds at [`ADDR`].
const PTE_NEW: u64 = 0xb001;
/// The PTE a `pte_offset_map_lock` writer puts at [`ADDR`].
const PTE_WRITTEN: u64 = 0xc001;

/// One PTE table of the pool: its memory, its entries and its split lock.
struct Table {
    /// [`UNUSED`], [`LIVE`] or [`POISON`]: read by every access, written by alloc and free.
    mem: UnsafeCell<u64>,
    ptes: [AtomicU64; PTES],
    /// The split PTE lock (`ptl`).
    ptl: SpinLock,
    /// Claimed by `pte_alloc_one`; never given back, so a freed table is never reused and a
    /// late access always finds the poison.
    taken: AtomicBool,
}

impl Table {
    fn new() -> Self {
        Table {
            mem: UnsafeCell::new(UNUSED),
            ptes: std::array::from_fn(|_| AtomicU64::new(0)),
            ptl: SpinLock::new(),
            taken: AtomicBool::new(false),
        }
    }

    /// An access to the table's memory: loom checks it is ordered after the allocation and
    /// before the free.
    fn touch(&self, what: &str) {
        // SAFETY: under loom the threads run one at a time, so the cell is never accessed
        // concurrently for real; loom reports a read that is not ordered by happens-before
        // with every write of the cell (the allocation, the free).
        let mem = self.mem.with(|p| unsafe { *p });
        assert_eq!(mem, LIVE, "{what} on a PTE table that is not allocated");
    }

    /// Writes the table's memory (allocation: [`LIVE`], free: [`POISON`]).
    fn set_mem(&self, value: u64) {
        // SAFETY: as in `touch`; loom reports a write not ordered with every other access.
        self.mem.with_mut(|p| unsafe { *p = value });
    }
}

/// The pool of PTE tables, shared with the deferred frees (`call_rcu` callbacks).
struct Tables([Table; TABLES]);

// SAFETY: `Table::mem` is the only field that is not `Sync`. Under loom (this file compiles
// only with `--cfg loom`) threads run one at a time, so the cell is never accessed
// concurrently for real, and loom reports every pair of accesses to it that happens-before
// does not order; that report is what the models check for.
unsafe impl Sync for Tables {}

impl Tables {
    /// Frees table `t`: the poison write a walker must never race with.
    fn free(&self, t: usize) {
        self.0[t].set_mem(POISON);
    }
}

/// A pmd slot: 0 (none) or `t + 1` for table `t`.
struct Slot(AtomicUsize);

/// The backend: one PMD table of one slot, its PMD lock, and the pool of PTE tables.
struct LoomPgtable {
    rcu: TinyRcuDomain,
    slot: Slot,
    /// The PMD lock of the one PMD table.
    pml: SpinLock,
    tables: std::sync::Arc<Tables>,
    /// `pte_map` calls of kind [`MapKind::MapLock`] (std atomic, invisible to loom): how many
    /// attempts `pte_offset_map_lock` made, to show the retry path was explored.
    map_locks: std::sync::atomic::AtomicUsize,
}

impl LoomPgtable {
    /// A backend with an empty slot.
    fn new() -> Self {
        LoomPgtable {
            rcu: TinyRcuDomain::new(),
            slot: Slot(AtomicUsize::new(0)),
            pml: SpinLock::new(),
            tables: std::sync::Arc::new(Tables(std::array::from_fn(|_| Table::new()))),
            map_locks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A backend whose slot names a table holding [`PTE_OLD`] at [`ADDR`], installed through
    /// the crate's API (on the model's main thread, before any other thread exists).
    fn with_table() -> Self {
        let b = LoomPgtable::new();
        populate(&b, PTE_OLD);
        b
    }

    fn table(&self, t: usize) -> &Table {
        &self.tables.0[t]
    }

    /// The checks of a write through a map of kind `kind`.
    fn check_write(&self, t: usize, kind: MapKind, what: &str) {
        let table = self.table(t);
        table.touch(what);
        if kind != MapKind::Owned {
            assert!(table.ptl.is_locked(), "{what} without the PTE lock");
            // Under the PTE lock the slot cannot stop naming the table (removal takes the
            // lock), so this load sees the slot's current value.
            assert_eq!(
                self.slot.0.load(Ordering::Acquire),
                t + 1,
                "{what} into a detached PTE table (the slot no longer names it)"
            );
        }
    }
}

/// The backend's fault-path lock: it has no remover that works by exclusivity, so installing
/// is allowed under any borrow of it.
struct LoomMm<'b>(&'b LoomPgtable);

// SAFETY: the slot is this backend's and lies in its only PMD table, which lives as long as
// the backend and is never freed: any borrow of the backend keeps it stable.
unsafe impl<'b> WalkLock<'b, LoomPgtable> for LoomMm<'b> {
    type Error = PgtableError;

    fn backend(&self) -> &'b LoomPgtable {
        self.0
    }

    fn pmd_slot(&self, _addr: u64) -> Result<Option<&Slot>, PgtableError> {
        Ok(Some(&self.0.slot))
    }
}

impl<'b> LoomMm<'b> {
    /// The backend's walk (the provided `pmd_offset`): one slot covers every address.
    fn pmd(&self) -> PmdRef<'b, '_, LoomPgtable, InTable> {
        match self.pmd_offset(ADDR) {
            Ok(Some(pmd)) => pmd,
            _ => unreachable!("the walk always finds the one slot"),
        }
    }
}

// SAFETY: `LoomPgtable` has no `ExclusiveAccess` remover, and the check refuses another
// backend's slots.
unsafe impl InstallLock<LoomPgtable> for LoomMm<'_> {
    fn allows_install(&self, backend: &LoomPgtable, slot: &Slot) -> Result<(), PgtableError> {
        if std::ptr::eq(self.0, backend) && std::ptr::eq(&backend.slot, slot) {
            Ok(())
        } else {
            Err(PgtableError::WrongBackend)
        }
    }
}

// SAFETY: (1) tables are freed only by `pte_free_defer`, through a `call_rcu` callback of
// `self.rcu` (the callback holds the pool), or by `pte_free`, which the provenance layer calls
// only for `Fresh` tables; the pool (memory and locks) lives as long as the backend or a
// callback. (2) The slot is cleared only by `pmdp_collapse_flush`, which asserts both locks.
// (3) `pmd_populate` is a Release store, after every write of the owner. (4) `pmd_table`
// accepts only values `1..=TABLES`.
unsafe impl PgtableBackend for LoomPgtable {
    type Rcu = TinyRcuDomain;
    type Error = PgtableError;
    type PmdSlot = Slot;
    type PmdSnapshot = usize;
    type Table = usize;
    type Pte = u64;

    fn rcu(&self) -> &TinyRcuDomain {
        &self.rcu
    }
    fn pmdp_get_lockless(&self, slot: &Slot) -> usize {
        slot.0.load(Ordering::Acquire)
    }
    fn pmd_table(&self, pmd: &usize) -> Result<usize, NoMap> {
        match *pmd {
            0 => Err(NoMap::None),
            v if v <= TABLES => Ok(v - 1),
            _ => Err(NoMap::Bad),
        }
    }
    fn pmd_of_table(&self, t: &usize) -> usize {
        t + 1
    }
    fn pte_index(&self, addr: u64) -> usize {
        (addr >> 12) as usize % PTES
    }
    fn ptrs_per_pte(&self) -> usize {
        PTES
    }
    unsafe fn pte_map(&self, t: &usize, kind: MapKind) {
        if kind == MapKind::MapLock {
            self.map_locks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.table(*t).touch("pte_map");
    }
    unsafe fn ptep_get(&self, t: &usize, i: usize, _: MapKind) -> u64 {
        let table = self.table(*t);
        table.touch("ptep_get");
        table.ptes[i].load(Ordering::Relaxed)
    }
    unsafe fn set_pte(
        &self,
        t: &usize,
        i: usize,
        pte: u64,
        kind: MapKind,
    ) -> Result<(), PgtableError> {
        self.check_write(*t, kind, "set_pte");
        self.table(*t).ptes[i].store(pte, Ordering::Relaxed);
        Ok(())
    }
    unsafe fn ptep_get_and_clear(&self, t: &usize, i: usize, kind: MapKind) -> u64 {
        self.check_write(*t, kind, "ptep_get_and_clear");
        self.table(*t).ptes[i].swap(0, Ordering::Relaxed)
    }
    unsafe fn pte_lock(&self, t: &usize) {
        let table = self.table(*t);
        table.touch("pte_lock");
        table.ptl.lock();
    }
    unsafe fn pte_unlock(&self, t: &usize) {
        let table = self.table(*t);
        table.touch("pte_unlock");
        table.ptl.unlock();
    }
    unsafe fn pmd_lock(&self, _: &Slot) {
        self.pml.lock();
    }
    unsafe fn pmd_trylock(&self, _: &Slot) -> bool {
        self.pml.try_lock()
    }
    unsafe fn same_pmd_lock(&self, _: &Slot, _: &Slot) -> bool {
        true
    }
    unsafe fn pmd_unlock(&self, _: &Slot) {
        self.pml.unlock();
    }
    unsafe fn pmd_populate(&self, slot: &Slot, t: &usize) {
        assert!(self.pml.is_locked(), "pmd_populate without the PMD lock");
        slot.0.store(t + 1, Ordering::Release);
    }
    unsafe fn pmdp_collapse_flush(&self, slot: &Slot) -> usize {
        assert!(
            self.pml.is_locked(),
            "pmdp_collapse_flush without the PMD lock"
        );
        let old = slot.0.swap(0, Ordering::AcqRel);
        let t = self.pmd_table(&old).expect("the slot named a PTE table");
        assert!(
            self.table(t).ptl.is_locked(),
            "pmdp_collapse_flush without the PTE lock"
        );
        old
    }
    unsafe fn pgtable_trans_huge_deposit(&self, _: &Slot, _: &usize) -> bool {
        false
    }
    unsafe fn pgtable_trans_huge_withdraw(&self, _: &Slot) -> Option<usize> {
        None
    }
    fn pte_alloc_one(&self) -> Result<usize, PgtableError> {
        let t = self
            .tables
            .0
            .iter()
            .position(|t| {
                t.taken
                    .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(PgtableError::OutOfMemory)?;
        let table = self.table(t);
        // The zeroing of a fresh frame: a walker that reaches it must be ordered after this.
        table.set_mem(LIVE);
        for p in &table.ptes {
            p.store(0, Ordering::Relaxed);
        }
        Ok(t)
    }
    unsafe fn pte_free(&self, t: &usize) {
        self.tables.free(*t);
    }
    unsafe fn pte_free_defer(&self, t: &usize) {
        let (tables, t) = (self.tables.clone(), *t);
        self.rcu.call_rcu(Box::new(move || tables.free(t)));
    }
}

/// `pte_alloc_one`, a fill through the owned map, and `pmd_populate` under the PMD lock: the
/// crate's install path.
fn populate(b: &LoomPgtable, pte: u64) {
    let mut table = DetachedPmd::pte_alloc_one(b).expect("a free table");
    table
        .pte_offset_map_mut(ADDR)
        .set_pte(ADDR, pte)
        .expect("the backend takes any PTE");
    let mm = LoomMm(b);
    let pmd = mm.pmd();
    let pml = pmd_lock(&pmd);
    table
        .pmd_populate(&mm, &pml)
        .map_err(|r| r.error)
        .expect("the slot is empty");
}

/// The remover: `pmd_lock`, `pte_offset_map_lock`, `pmdp_collapse_flush` (the table is now
/// `Retired`), optionally a replacement table holding [`PTE_NEW`] installed under the same PMD
/// lock, then `pte_free_defer` and a grace period (`rcu_barrier`, which runs the free).
fn retract(b: &LoomPgtable, replace: bool) {
    let mm = LoomMm(b);
    let pmd = mm.pmd();
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_lock(&pmd, ADDR).expect("the table is installed");
    let old = pmdp_collapse_flush(&pml, ptl)
        .map_err(|r| r.error)
        .expect("the slot names the locked table");
    if replace {
        let mut new = DetachedPmd::pte_alloc_one(b).expect("a free table");
        new.pte_offset_map_mut(ADDR)
            .set_pte(ADDR, PTE_NEW)
            .expect("the backend takes any PTE");
        new.pmd_populate(&LoomMm(b), &pml)
            .map_err(|r| r.error)
            .expect("the slot was just cleared");
    }
    drop(pml);
    old.pte_free_defer();
    b.rcu().rcu_barrier();
}

/// Outcomes of one walker (its [`Tally`] index is `walker * OUTCOMES + outcome`).
const SAW_NONE: usize = 0;
const SAW_OLD: usize = 1;
const SAW_NEW: usize = 2;
const SAW_WRITTEN: usize = 3;
const OUTCOMES: usize = 4;
/// Tally index: some `pte_offset_map_lock` found its snapshot stale under the lock and retried.
const RETRIED: usize = 15;

/// Reads the PTE at [`ADDR`] through `map` result, as a walker outcome.
fn outcome(pte: Result<u64, NoMap>) -> usize {
    match pte {
        Ok(PTE_OLD) => SAW_OLD,
        Ok(PTE_NEW) => SAW_NEW,
        Ok(PTE_WRITTEN) => SAW_WRITTEN,
        Ok(other) => panic!("walker read PTE {other:#x}: an unfilled or torn table"),
        Err(NoMap::None) => SAW_NONE,
        Err(e) => panic!("walker found no table: {e:?}"),
    }
}

/// A walker thread's body; returns its outcome.
type Walker = fn(&LoomPgtable) -> usize;

/// Runs each of `walkers` on a thread of its own against `main` on the model's thread, over a
/// backend made by `setup`, and counts the walkers' outcomes. `locks` is how many
/// `pte_offset_map_lock` calls all threads together make: more `MapLock` maps than that
/// means one of them retried.
fn race(
    name: &'static str,
    setup: fn() -> LoomPgtable,
    walkers: &'static [Walker],
    main: fn(&LoomPgtable),
    locks: usize,
) -> Tally {
    assert!(walkers.len() * OUTCOMES <= RETRIED);
    check_tallied(name, move |t| {
        let b = Arc::new(setup());
        let threads = Walkers::spawn(&b, walkers.len(), move |b, w| walkers[w](b));
        main(&b);
        for (w, outcome) in threads.join().into_iter().enumerate() {
            t.hit(w * OUTCOMES + outcome);
        }
        if b.map_locks.load(std::sync::atomic::Ordering::Relaxed) > locks {
            t.hit(RETRIED);
        }
    })
}

/// Case 3: `pte_offset_map` on an `InTable` pmd, which opens its own RCU section before it
/// reads the slot.
fn walk_in_table(b: &LoomPgtable) -> usize {
    outcome(pte_offset_map(&LoomMm(b).pmd(), ADDR).map(|map| map.pte()))
}

/// Case 2: a copy of the pmd under the walker's own guard, then `pte_offset_map` on it.
fn walk_copied(b: &LoomPgtable) -> usize {
    let guard = b.rcu().read_lock();
    let mm = LoomMm(b);
    let pmd = mm.pmd();
    let copy = pmdp_get_lockless(&pmd, &guard).expect("the backend's own domain");
    outcome(pte_offset_map(&copy, ADDR).map(|map| map.pte()))
}

/// What it proves: `pte_offset_map` on an in-table pmd is safe against a remover that unlinks
/// the table under both locks and frees it with `pte_free_defer`: whichever order the walker's
/// section, slot read and table reads take against the unlink, the grace period and the poison
/// write, the walker either finds the slot empty or reads the live table, never freed memory.
/// Fails if `PteMap::open` reads the slot before it opens its section, if `pte_free_defer`
/// frees at once, or if the tiny RCU loses an ordering.
#[test]
fn map_vs_retract() {
    let tally = race(
        "map_vs_retract: pte_offset_map(InTable) vs collapse + pte_free_defer",
        LoomPgtable::with_table,
        &[walk_in_table],
        |b| retract(b, false),
        1,
    );
    assert!(tally.get(SAW_OLD) > 0 && tally.get(SAW_NONE) > 0);
}

/// What it proves: the same for a lockless (GUP-fast style) walker whose proof is a copy read
/// inside its own read section (`pmdp_get_lockless`, `CopiedUnderRcu`): the section the copy
/// borrows holds off the deferred free for as long as the map lives.
#[test]
fn copied_map_vs_retract() {
    let tally = race(
        "copied_map_vs_retract: pte_offset_map(CopiedUnderRcu) vs collapse + pte_free_defer",
        LoomPgtable::with_table,
        &[walk_copied],
        |b| retract(b, false),
        1,
    );
    assert!(tally.get(SAW_OLD) > 0 && tally.get(SAW_NONE) > 0);
}

/// What it proves: both lockless walkers at once against the remover: three threads whose
/// read sections claim, release and reuse the tiny RCU's reader slots in every order, with the
/// deferred free still ordered after every walker's reads.
#[test]
fn two_walkers_vs_retract() {
    let tally = race(
        "two_walkers_vs_retract: pte_offset_map(InTable) + pte_offset_map(copy) vs collapse + pte_free_defer",
        LoomPgtable::with_table,
        &[walk_in_table, walk_copied],
        |b| retract(b, false),
        1,
    );
    for w in 0..2 {
        assert!(tally.get(w * OUTCOMES + SAW_OLD) > 0 && tally.get(w * OUTCOMES + SAW_NONE) > 0);
    }
}

/// `pte_offset_map_lock` and a `set_pte` through the `Attached` lock; returns which table the
/// write went to (by the entry it replaced).
///
/// Between the remover's collapse and its populate the slot is empty: a writer that retries
/// then finds no table ([`SAW_NONE`]), as a kernel caller of `pte_offset_map_lock` may.
fn write_locked(b: &LoomPgtable) -> usize {
    let mm = LoomMm(b);
    let pmd = mm.pmd();
    match pte_offset_map_lock(&pmd, ADDR) {
        Ok(ptl) => {
            let seen = outcome(Ok(ptl.pte()));
            ptl.set_pte(ADDR, PTE_WRITTEN)
                .expect("the backend takes any PTE");
            seen
        }
        Err(e) => outcome(Err(e)),
    }
}

/// What it proves: `pte_offset_map_lock` never hands out an `Attached` lock of a table that is
/// no longer in the slot: against a remover that detaches the table under its PTE lock,
/// installs a replacement and frees the old one after a grace period, the writer writes into
/// the old table while it is still installed, or into the replacement (directly, or after its
/// `pmd_same` recheck under the lock failed and it retried), never into the detached table
/// (the backend's `set_pte` checks the slot) and never into freed memory. Fails without the
/// recheck (`P::recheck_slot`).
#[test]
fn map_lock_vs_retract_and_replace() {
    let tally = race(
        "map_lock_vs_retract_and_replace: pte_offset_map_lock + set_pte vs collapse + populate",
        LoomPgtable::with_table,
        &[write_locked],
        |b| retract(b, true),
        2,
    );
    assert!(tally.get(SAW_OLD) > 0 && tally.get(SAW_NEW) > 0 && tally.get(RETRIED) > 0);
}

/// What it proves: a lockless walker and a locked writer together against the remover that
/// replaces the table: the walker reads the old table (as installed or as the writer left it),
/// the empty slot, or the replacement (likewise), never freed or unpublished memory, while
/// the writer keeps the guarantees of `map_lock_vs_retract_and_replace`.
#[test]
fn walker_and_writer_vs_retract_and_replace() {
    let tally = race(
        "walker_and_writer_vs_retract_and_replace: pte_offset_map + pte_offset_map_lock vs collapse + populate",
        LoomPgtable::with_table,
        &[walk_in_table, write_locked],
        |b| retract(b, true),
        2,
    );
    assert!(tally.get(SAW_OLD) > 0 && tally.get(SAW_NEW) > 0 && tally.get(SAW_WRITTEN) > 0);
    assert!(tally.get(OUTCOMES + SAW_OLD) > 0 && tally.get(OUTCOMES + SAW_NEW) > 0);
}

/// What it proves: publication through the crate's install path. A table allocated with
/// `pte_alloc_one`, filled through `pte_offset_map_mut` and installed with `pmd_populate`
/// under the PMD lock is seen by concurrent lockless walkers (one of each case) either not at
/// all (empty slot) or fully: its allocation and its filled entry happen before their reads.
#[test]
fn populate_vs_map() {
    let tally = race(
        "populate_vs_map: pte_alloc_one + fill + pmd_populate vs pte_offset_map(InTable, copy)",
        LoomPgtable::new,
        &[walk_in_table, walk_copied],
        |b| populate(b, PTE_OLD),
        0,
    );
    for w in 0..2 {
        assert!(tally.get(w * OUTCOMES + SAW_OLD) > 0 && tally.get(w * OUTCOMES + SAW_NONE) > 0);
    }
}
