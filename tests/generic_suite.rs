//! One suite, several backends: the provenance API and the generic operations of
//! `typed_pgtable::ops`, tested once as generic functions over a [`Fixture`] and instantiated
//! for each backend by [`suite!`].
//!
//! A fixture is a backend plus what a test needs that the traits do not say: a walk lock that
//! allows installs, an address per pmd slot, a present PTE value the backend accepts, the
//! bookkeeping a backend wants before a table is freed (the in-memory MMU's
//! `page_table_check`), and a count of the tables it holds. The suite checks, for every
//! backend: the life of a table (fill, install, lockless and locked walks, GUP-fast, retract,
//! deferred free), the refusals, and removers racing lockless and locked walkers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use typed_pgtable::ops::{
    GupPin, fill_pte_table, gup_fast_one, populate_filled, retract_pte_table,
};
use typed_pgtable::provenance::{
    DetachedPmd, Fresh, InstallLock, LocklessWalk, PgtableError, Retired, WalkLock, pmd_lock,
    pte_offset_map, pte_offset_map_lock,
};
use typed_pgtable::rcu::RcuDomain;

/// What the generic suite needs of a backend beyond its traits.
trait Fixture:
    LocklessWalk<Error = <Self as Fixture>::Err, Pte = <Self as Fixture>::Entry>
    + Sized
    + Sync
    + 'static
{
    /// The backend's error, comparable.
    type Err: From<PgtableError> + PartialEq + core::fmt::Debug;
    /// The backend's PTE, shareable between the suite's threads.
    type Entry: Copy + PartialEq + core::fmt::Debug + Send + Sync;
    /// The walk lock installs and walks happen under.
    type Lock<'m>: WalkLock<'m, Self, Error = Self::Error> + InstallLock<Self>;

    /// A fresh backend whose slots `0..SLOTS` exist (upper levels allocated), all empty.
    fn new() -> Self;
    /// Takes the walk lock.
    fn lock(&self) -> Self::Lock<'_>;
    /// An address inside pmd slot `i`.
    fn addr(i: usize) -> u64;
    /// A present PTE the backend accepts, numbered `n` (distinct values for distinct `n`).
    fn present(&self, n: u64) -> Self::Pte;
    /// Whether `pte` maps something.
    fn is_present(pte: &Self::Pte) -> bool;
    /// The backend's bookkeeping before a retracted table is freed.
    fn before_free(&self, table: &DetachedPmd<'_, Self, Retired>, addr: u64);
    /// PTE tables the backend holds (allocated and not yet freed).
    fn tables_in_use(&self) -> usize;
    /// Protocol violations the backend saw (an audit), if it keeps count.
    fn violations(&self) -> u64 {
        0
    }
}

/// Slots a fixture provides.
const SLOTS: usize = 2;

/// A pin that just remembers the PTE it was taken on.
struct Pins<B: Fixture> {
    taken: u64,
    dropped: u64,
    _b: core::marker::PhantomData<B>,
}

impl<B: Fixture> Pins<B> {
    fn new() -> Self {
        Pins {
            taken: 0,
            dropped: 0,
            _b: core::marker::PhantomData,
        }
    }
}

impl<B: Fixture> GupPin<B> for Pins<B> {
    type Pin = B::Pte;

    fn pin_pte(&mut self, pte: &B::Pte, _addr: u64) -> Option<B::Pte> {
        B::is_present(pte).then(|| {
            self.taken += 1;
            *pte
        })
    }

    fn unpin(&mut self, _pin: B::Pte) {
        self.dropped += 1;
    }
}

/// Installs a fresh table holding `entries` at slot `i`.
fn install<B: Fixture>(b: &B, i: usize, entries: Vec<B::Pte>) {
    let lock = b.lock();
    let pmd = lock
        .pmd_offset(B::addr(i))
        .ok()
        .flatten()
        .expect("slot exists");
    let pml = pmd_lock(&pmd);
    let table = DetachedPmd::pte_alloc_one(b).expect("a free table");
    populate_filled(table, &lock, &pml, B::addr(i), entries)
        .map_err(|r| r.error)
        .expect("the slot is empty");
}

/// Retracts the table at slot `i`; whether there was one.
fn retract<B: Fixture>(b: &B, i: usize) -> bool {
    let lock = b.lock();
    let addr = B::addr(i);
    matches!(
        retract_pte_table(&lock, addr, |_| true, |t| b.before_free(t, addr)),
        Ok(Some(()))
    )
}

/// The value at `addr` through a lockless copy, if a table is there.
fn read_lockless<B: Fixture>(b: &B, addr: u64) -> Option<B::Pte> {
    let guard = b.rcu().read_lock();
    let pmd = b.pmd_copy_lockless(&guard, addr).ok()??;
    let map = pte_offset_map(&pmd, addr).ok()?;
    Some(map.ptep_get(addr))
}

fn life_of_a_table<B: Fixture>() {
    let b = B::new();
    let addr = B::addr(0);
    let (p1, p2) = (b.present(1), b.present(2));
    install(&b, 0, vec![p1]);
    assert_eq!(b.tables_in_use(), 1);
    // Case 2: a lockless copy sees the entry the owner wrote before publishing.
    assert_eq!(read_lockless(&b, addr), Some(p1));
    // Case 3: lock, recheck, write.
    {
        let lock = b.lock();
        let pmd = lock.pmd_offset(addr).unwrap().unwrap();
        let pte = pte_offset_map_lock(&pmd, addr).unwrap();
        assert_eq!(pte.pte(), p1);
        pte.set_pte(addr, p2).unwrap();
    }
    // GUP-fast pins what is mapped.
    let guard = b.rcu().read_lock();
    let mut pins = Pins::<B>::new();
    let pin = gup_fast_one(&b, &guard, addr, &mut pins).ok().flatten();
    assert_eq!(pin, Some(p2));
    assert_eq!((pins.taken, pins.dropped), (1, 0));
    drop(guard);
    // Retract: detached under both locks, freed after a grace period.
    assert!(retract(&b, 0));
    assert!(!retract(&b, 0), "nothing left to retract");
    assert_eq!(read_lockless(&b, addr), None);
    b.rcu().rcu_barrier();
    assert_eq!(b.tables_in_use(), 0);
    assert_eq!(b.violations(), 0);
}

fn a_section_keeps_a_retracted_table<B: Fixture>() {
    let b = B::new();
    let addr = B::addr(1);
    let p = b.present(7);
    install(&b, 1, vec![p]);
    let guard = b.rcu().read_lock();
    let copy = b.pmd_copy_lockless(&guard, addr).unwrap().unwrap();
    let map = pte_offset_map(&copy, addr).unwrap();
    // A remover on another thread detaches and defers the free.
    thread::scope(|s| s.spawn(|| assert!(retract(&b, 1))).join().unwrap());
    assert!(!copy.still_installed());
    assert_eq!(map.ptep_get(addr), p, "still readable inside the section");
    assert_eq!(b.tables_in_use(), 1, "not freed while the section is open");
    drop(map);
    drop(guard);
    b.rcu().rcu_barrier();
    assert_eq!(b.tables_in_use(), 0);
    assert_eq!(b.violations(), 0);
}

fn refusals<B: Fixture>() {
    let b = B::new();
    install(&b, 0, vec![b.present(1)]);
    // A second install into the occupied slot hands the table back.
    {
        let lock = b.lock();
        let pmd = lock.pmd_offset(B::addr(0)).unwrap().unwrap();
        let pml = pmd_lock(&pmd);
        let table: DetachedPmd<'_, B, Fresh> = DetachedPmd::pte_alloc_one(&b).unwrap();
        let r = populate_filled(table, &lock, &pml, B::addr(0), vec![b.present(2)]).unwrap_err();
        assert!(r.error == PgtableError::SlotOccupied.into());
        r.value.pte_free();
    }
    // A guard of another backend's domain is refused by the lockless walk.
    let other = B::new();
    let guard = other.rcu().read_lock();
    assert!(
        b.pmd_copy_lockless(&guard, B::addr(0)).err() == Some(PgtableError::WrongBackend.into())
    );
    drop(guard);
    // A retract whose recheck refuses leaves the table in place.
    {
        let lock = b.lock();
        let r = retract_pte_table(
            &lock,
            B::addr(0),
            |_| false,
            |t| b.before_free(t, B::addr(0)),
        );
        assert!(r.err() == Some(PgtableError::PmdChanged.into()));
    }
    assert!(read_lockless(&b, B::addr(0)).is_some());
    // An empty slot has nothing to retract.
    assert!(!retract(&b, 1));
    // A fill of a fresh table, freed at once: it was never visible.
    let mut fresh: DetachedPmd<'_, B, Fresh> = DetachedPmd::pte_alloc_one(&b).unwrap();
    fill_pte_table(&mut fresh, B::addr(1), [b.present(3)])
        .ok()
        .unwrap();
    fresh.pte_free();
    assert!(retract(&b, 0));
    b.rcu().rcu_barrier();
    assert_eq!(b.tables_in_use(), 0);
    assert_eq!(b.violations(), 0);
}

/// How many remove-and-reinstall rounds the race runs (few enough for Miri).
const ROUNDS: u64 = if cfg!(miri) { 20 } else { 400 };

fn removers_race_lockless_and_locked_walkers<B: Fixture>() {
    let b = B::new();
    let addr = B::addr(0);
    let values: Vec<B::Pte> = (0..4).map(|n| b.present(10 + n)).collect();
    install(&b, 0, vec![values[0]]);
    let stop = AtomicBool::new(false);
    let (seen, written) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|s| {
        // Lockless walkers: GUP-fast style, every value read is one that was written.
        s.spawn(|| {
            let mut pins = Pins::<B>::new();
            while !stop.load(Ordering::Acquire) {
                let guard = b.rcu().read_lock();
                if let Ok(Some(pte)) = gup_fast_one(&b, &guard, addr, &mut pins) {
                    assert!(values.contains(&pte), "a pin of a value never written");
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                drop(guard);
                thread::yield_now();
            }
        });
        // Locked writers: every write goes into an installed table.
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let lock = b.lock();
                if let Ok(Some(pmd)) = lock.pmd_offset(addr) {
                    if let Ok(pte) = pte_offset_map_lock(&pmd, addr) {
                        n += 1;
                        pte.set_pte(addr, values[n % values.len()]).unwrap();
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(lock);
                thread::yield_now();
            }
        });
        // The remover: retract and reinstall, at least ROUNDS times and until both walkers
        // have done something (bounded: a walker that never runs fails the test below).
        let mut round = 0;
        while round < ROUNDS
            || (seen.load(Ordering::Relaxed) == 0 || written.load(Ordering::Relaxed) == 0)
                && round < 100 * ROUNDS
        {
            assert!(retract(&b, 0));
            install(&b, 0, vec![values[(round % 4) as usize]]);
            if round % 16 == 0 {
                thread::yield_now();
            }
            round += 1;
        }
        stop.store(true, Ordering::Release);
    });
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the lockless walker never pinned"
    );
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "the locked writer never wrote"
    );
    assert!(retract(&b, 0));
    b.rcu().rcu_barrier();
    assert_eq!(b.tables_in_use(), 0);
    assert_eq!(b.violations(), 0);
}

/// Instantiates every test of the suite for one fixture: a `#[test]` per generic test fn,
/// named after it, in a module of the fixture's name.
macro_rules! suite {
    ($name:ident, $fixture:ty) => {
        suite!(
            $name,
            $fixture,
            life_of_a_table,
            a_section_keeps_a_retracted_table,
            refusals,
            removers_race_lockless_and_locked_walkers,
        );
    };
    ($name:ident, $fixture:ty, $($test:ident),+ $(,)?) => {
        mod $name {
            $(
                #[test]
                fn $test() {
                    super::$test::<$fixture>();
                }
            )+
        }
    };
}

#[cfg(not(miri))]
mod mmu_fixture {
    use super::*;
    use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
    use typed_pgtable::mmu::{FrameKind, MmapReadGuard, Mmu, MmuConfig, PMD_SIZE, Pte, VmaKind};

    const BASE: u64 = 0x4000_0000;
    const FRAMES: usize = 1024;

    impl Fixture for Mmu {
        type Err = typed_pgtable::Error;
        type Entry = Pte;
        type Lock<'m> = MmapReadGuard<'m>;

        fn new() -> Self {
            let mmu = Mmu::new(MmuConfig {
                frames: FRAMES,
                va_limit: 1 << 32,
            })
            .unwrap();
            mmu.mmap(BASE, SLOTS as u64 * PMD_SIZE, VmaKind::Anon)
                .unwrap();
            {
                let mm = mmu.mmap_read_lock();
                for i in 0..SLOTS {
                    mm.pmd_alloc(Self::addr(i)).unwrap();
                }
            }
            mmu
        }
        fn lock(&self) -> MmapReadGuard<'_> {
            self.mmap_read_lock()
        }
        fn addr(i: usize) -> u64 {
            BASE + i as u64 * PMD_SIZE
        }
        fn present(&self, _n: u64) -> Pte {
            let page = self.alloc_data_frame().unwrap();
            let pte = Pte::anon_page(page.pfn());
            // The page stays in use for the test's life, so that PTEs may map it (each PTE
            // takes a reference of its own).
            std::mem::forget(page);
            pte
        }
        fn is_present(pte: &Pte) -> bool {
            pte.is_present()
        }
        fn before_free(&self, table: &DetachedPmd<'_, Self, Retired>, addr: u64) {
            let _report = page_table_check_pte_clear_range(self, addr, &table.pmd());
        }
        fn tables_in_use(&self) -> usize {
            (0..FRAMES as u64)
                .filter(|&pfn| self.frame_kind(pfn) == Some(FrameKind::Pte))
                .count()
        }
        fn violations(&self) -> u64 {
            self.audit().violations()
        }
    }

    suite!(mmu, typed_pgtable::mmu::Mmu);
}

#[cfg(feature = "heap")]
mod heap_fixture {
    use super::*;
    use typed_pgtable::heap::HeapMm;
    use typed_pgtable::heap::HeapPgtable;
    use typed_pgtable::heap::desc::{Prot, Pte, pfn_pte, pte_valid};

    const PMD_SIZE: u64 = 2 << 20;

    impl Fixture for HeapPgtable {
        type Err = PgtableError;
        type Entry = Pte;
        type Lock<'m> = HeapMm<'m>;

        fn new() -> Self {
            HeapPgtable::new().unwrap()
        }
        fn lock(&self) -> HeapMm<'_> {
            self.mmap_read_lock()
        }
        fn addr(i: usize) -> u64 {
            i as u64 * PMD_SIZE
        }
        fn present(&self, n: u64) -> Pte {
            pfn_pte(0x100 + n, Prot::USER)
        }
        fn is_present(pte: &Pte) -> bool {
            pte_valid(*pte)
        }
        fn before_free(&self, _table: &DetachedPmd<'_, Self, Retired>, _addr: u64) {}
        fn tables_in_use(&self) -> usize {
            self.tables_live()
        }
    }

    suite!(heap, typed_pgtable::heap::HeapPgtable);
}
