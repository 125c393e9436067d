//! A page-table backend written outside the crate, as a kernel-like project would write one:
//! the provenance API (`pte_offset_map` and its family, detached tables, the PMD lock) works on
//! it unchanged, through [`PgtableBackend`] alone.
//!
//! The toy has one PMD table of 4 slots and a pool of 4 PTE tables of 8 entries. A pmd value is
//! 0 (none), `HUGE | n` (a huge leaf) or `n + 1` for table `n`; anything else is malformed. Its
//! RCU domain is the crate's `EpochRcu`; a kernel would plug in its own.

use spin::SpinLock;
use std::boxed::Box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use typed_pgtable::NoMap;
use typed_pgtable::provenance::{
    DetachedPmd, InTable, InstallLock, LocklessWalk, MapKind, PgtableBackend, PgtableError, PmdRef,
    WalkLock, pmd_lock, pmdp_collapse_flush, pmdp_get_lockless, pte_offset_map,
    pte_offset_map_lock,
};
use typed_pgtable::rcu::{EpochRcu, RcuDomain, RcuGuard};

#[path = "common/spin.rs"]
mod spin;

const SLOTS: usize = 4;
const TABLES: usize = 4;
const PTES: usize = 8;
const HUGE: u64 = 1 << 63;

/// A pmd slot of the toy.
struct Slot(AtomicU64);

#[derive(Default)]
struct Table {
    ptes: [AtomicU64; PTES],
    lock: SpinLock,
    in_use: AtomicBool,
}

struct Toy {
    rcu: EpochRcu,
    slots: [Slot; SLOTS],
    pml: SpinLock,
    tables: Arc<[Table; TABLES]>,
    deposit: Mutex<Vec<usize>>,
}

impl Toy {
    fn new() -> Toy {
        Toy {
            rcu: EpochRcu::new(),
            slots: std::array::from_fn(|_| Slot(AtomicU64::new(0))),
            pml: SpinLock::new(),
            tables: Arc::new(std::array::from_fn(|_| Table::default())),
            deposit: Mutex::new(Vec::new()),
        }
    }

    fn tables_in_use(&self) -> usize {
        self.tables
            .iter()
            .filter(|t| t.in_use.load(Ordering::Acquire))
            .count()
    }
}

/// The toy's walk lock, which is also its fault-path lock: installing is allowed under it (it
/// has no removers that work by exclusivity). Slot `i` covers `[i << 21, (i + 1) << 21)`.
struct ToyMm<'t>(&'t Toy);

// SAFETY: the slots are the toy's, in its only PMD table, which lives as long as the toy: no
// path frees it while a token borrows the toy.
unsafe impl<'t> WalkLock<'t, Toy> for ToyMm<'t> {
    type Error = PgtableError;

    fn backend(&self) -> &'t Toy {
        self.0
    }

    fn pmd_slot(&self, addr: u64) -> Result<Option<&Slot>, PgtableError> {
        Ok(self.0.slots.get((addr >> 21) as usize))
    }
}

impl<'t> ToyMm<'t> {
    /// The pmd of slot `i` (the walk of the provided `pmd_offset`).
    fn pmd(&self, i: usize) -> PmdRef<'t, '_, Toy, InTable> {
        self.pmd_offset((i as u64) << 21).unwrap().unwrap()
    }
}

// SAFETY: the toy's only PMD table lives as long as the toy, longer than any read section.
unsafe impl LocklessWalk for Toy {
    fn pmd_slot_lockless<'g>(
        &'g self,
        _guard: &'g RcuGuard<'_, EpochRcu>,
        addr: u64,
    ) -> Option<&'g Slot> {
        self.slots.get((addr >> 21) as usize)
    }
}

// SAFETY: the toy has no `ExclusiveAccess` remover, and the check refuses another toy's slots.
unsafe impl InstallLock<Toy> for ToyMm<'_> {
    fn allows_install(&self, backend: &Toy, slot: &Slot) -> Result<(), PgtableError> {
        let ours =
            std::ptr::eq(self.0, backend) && backend.slots.iter().any(|s| std::ptr::eq(s, slot));
        if ours {
            Ok(())
        } else {
            Err(PgtableError::WrongBackend)
        }
    }
}

// SAFETY: tables are freed only by `pte_free_defer` (an RCU callback of `self.rcu`) or
// `pte_free` (never published); table memory and locks live in an `Arc` as long as any
// callback. Slots are cleared only by `pmdp_collapse_flush`, which the provenance layer calls
// with both locks held. `pmd_populate` is a release store. `pmd_table` accepts only values
// naming one of the toy's tables.
unsafe impl PgtableBackend for Toy {
    type Rcu = EpochRcu;
    type Error = PgtableError;
    type PmdSlot = Slot;
    type PmdSnapshot = u64;
    type Table = usize;
    type Pte = u64;

    fn rcu(&self) -> &EpochRcu {
        &self.rcu
    }
    fn pmdp_get_lockless(&self, slot: &Slot) -> u64 {
        slot.0.load(Ordering::Acquire)
    }
    fn pmd_table(&self, pmd: &u64) -> Result<usize, NoMap> {
        match *pmd {
            0 => Err(NoMap::None),
            v if v & HUGE != 0 => Err(NoMap::Huge),
            v if (1..=TABLES as u64).contains(&v) => Ok(v as usize - 1),
            _ => Err(NoMap::Bad),
        }
    }
    fn pmd_of_table(&self, table: &usize) -> u64 {
        *table as u64 + 1
    }
    fn ptrs_per_pte(&self) -> usize {
        PTES
    }
    unsafe fn ptep_get(&self, t: &usize, i: usize, _: MapKind) -> u64 {
        self.tables[*t].ptes[i].load(Ordering::Acquire)
    }
    unsafe fn set_pte(
        &self,
        t: &usize,
        i: usize,
        pte: u64,
        _: MapKind,
    ) -> Result<(), PgtableError> {
        self.tables[*t].ptes[i].store(pte, Ordering::Release);
        Ok(())
    }
    unsafe fn ptep_get_and_clear(&self, t: &usize, i: usize, _: MapKind) -> u64 {
        self.tables[*t].ptes[i].swap(0, Ordering::AcqRel)
    }
    unsafe fn pte_lock(&self, t: &usize) {
        self.tables[*t].lock.lock()
    }
    unsafe fn pte_unlock(&self, t: &usize) {
        self.tables[*t].lock.unlock()
    }
    unsafe fn pmd_lock(&self, _: &Slot) {
        self.pml.lock()
    }
    unsafe fn pmd_trylock(&self, _: &Slot) -> bool {
        self.pml.try_lock()
    }
    unsafe fn same_pmd_lock(&self, _: &Slot, _: &Slot) -> bool {
        true
    }
    unsafe fn pmd_unlock(&self, _: &Slot) {
        self.pml.unlock()
    }
    unsafe fn pmd_populate(&self, slot: &Slot, t: &usize) {
        slot.0.store(*t as u64 + 1, Ordering::Release)
    }
    unsafe fn pmdp_collapse_flush(&self, slot: &Slot) -> u64 {
        slot.0.swap(0, Ordering::AcqRel)
    }
    unsafe fn pgtable_trans_huge_deposit(&self, _: &Slot, t: &usize) -> bool {
        self.deposit.lock().unwrap().push(*t);
        true
    }
    unsafe fn pgtable_trans_huge_withdraw(&self, _: &Slot) -> Option<usize> {
        self.deposit.lock().unwrap().pop()
    }
    fn pte_alloc_one(&self) -> Result<usize, PgtableError> {
        let t = self
            .tables
            .iter()
            .position(|t| {
                t.in_use
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(PgtableError::OutOfMemory)?;
        for p in &self.tables[t].ptes {
            p.store(0, Ordering::Relaxed);
        }
        Ok(t)
    }
    unsafe fn pte_free(&self, t: &usize) {
        self.tables[*t].in_use.store(false, Ordering::Release)
    }
    unsafe fn pte_free_defer(&self, t: &usize) {
        let (tables, t) = (self.tables.clone(), *t);
        self.rcu.call_rcu(Box::new(move || {
            tables[t].in_use.store(false, Ordering::Release)
        }));
    }
}

#[test]
fn the_whole_life_of_a_table_on_a_foreign_backend() {
    let toy = Toy::new();
    // Fill a fresh table through an owned map, then publish it under the PMD lock.
    let mut table = DetachedPmd::pte_alloc_one(&toy).unwrap();
    table
        .pte_offset_map_mut(0x3000)
        .set_pte(0x3000, 0xabc)
        .unwrap();
    let mm = ToyMm(&toy);
    let pmd = mm.pmd(1);
    {
        let pml = pmd_lock(&pmd);
        table.pmd_populate(&mm, &pml).map_err(|r| r.error).unwrap();
    }
    assert_eq!(toy.tables_in_use(), 1);

    // Case 3: lock, recheck, write.
    {
        let pte = pte_offset_map_lock(&pmd, 0x3000).unwrap();
        assert_eq!(pte.pte(), 0xabc);
        pte.set_pte(0x4000, 0xdef).unwrap();
    }

    // Case 2: a copy under a read section sees the table; a remover detaches it meanwhile,
    // and the deferred free waits for the section.
    let guard = toy.rcu.read_lock();
    let copy = pmdp_get_lockless(&pmd, &guard).unwrap();
    let map = pte_offset_map(&copy, 0x4000).unwrap();
    let detached = {
        let pml = pmd_lock(&pmd);
        let ptl = pte_offset_map_lock(&pmd, 0x4000).unwrap();
        pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap()
    };
    assert!(!copy.still_installed());
    assert_eq!(pte_offset_map(&pmd, 0).err(), Some(NoMap::None));
    // Case 1: the owner reads its detached table.
    assert_eq!(
        pte_offset_map(&detached.pmd(), 0x4000).unwrap().pte(),
        0xdef
    );
    detached.pte_free_defer();
    assert_eq!(map.pte(), 0xdef, "still readable inside the read section");
    assert_eq!(
        toy.tables_in_use(),
        1,
        "not freed while the section is open"
    );
    drop(map);
    drop(guard);
    toy.rcu.rcu_barrier();
    assert_eq!(toy.tables_in_use(), 0);
}

#[test]
fn nomap_errors_and_identity_on_a_foreign_backend() {
    let toy = Toy::new();
    toy.slots[0].0.store(HUGE | 3, Ordering::Release);
    toy.slots[1].0.store(99, Ordering::Release);
    let mm = ToyMm(&toy);
    assert_eq!(pte_offset_map(&mm.pmd(0), 0).err(), Some(NoMap::Huge));
    assert_eq!(pte_offset_map(&mm.pmd(1), 0).err(), Some(NoMap::Bad));
    assert_eq!(pte_offset_map(&mm.pmd(2), 0).err(), Some(NoMap::None));

    // A guard of another domain is refused.
    let other = Toy::new();
    let guard = other.rcu.read_lock();
    assert_eq!(
        pmdp_get_lockless(&mm.pmd(2), &guard).err(),
        Some(PgtableError::WrongBackend)
    );
    assert_eq!(
        toy.pmd_copy_lockless(&guard, 0).err(),
        Some(PgtableError::WrongBackend)
    );
    drop(guard);
    // The lockless walk of any backend, with no `unsafe`: a GUP-fast style read and recheck.
    let guard = toy.rcu.read_lock();
    assert_eq!(
        toy.pmd_copy_lockless(&guard, 2 << 21)
            .unwrap()
            .map(|copy| pte_offset_map(&copy, 0).err()),
        Some(Some(NoMap::None))
    );
    assert!(toy.pmd_copy_lockless(&guard, 9 << 21).unwrap().is_none());
    drop(guard);

    // Out of tables: a typed error, and the pool is unchanged.
    let held: Vec<_> = (0..TABLES)
        .map(|_| DetachedPmd::pte_alloc_one(&toy).unwrap())
        .collect();
    assert_eq!(
        DetachedPmd::pte_alloc_one(&toy).err(),
        Some(PgtableError::OutOfMemory)
    );
    assert_eq!(toy.tables_in_use(), TABLES);
    for t in held {
        t.pte_free();
    }
    assert_eq!(toy.tables_in_use(), 0);
}
