//! Lockless PTE maps: `pte_offset_map` and the unprotected escape hatch.

use super::backend::{MapKind, PgtableBackend};
use super::marker::{Provenance, ProvesProtection, Unprotected};
use super::pmd::PmdRef;
use crate::error::NoMap;
use crate::rcu::{RcuDomain, RcuGuard};
use core::fmt;

/// A mapped PTE table, read-only (`pte_t *` from `pte_offset_map`).
///
/// Reads are racy snapshots: the table may be detached, emptied and queued for freeing while the
/// map lives, but its memory stays valid until the map is dropped (`pte_unmap`), because the map
/// holds an RCU read section. No writes: lock the table for that.
///
/// # Invariants
/// `table` was classified from `pmdval`, and is protected (see [`PgtableBackend`]) while the
/// map lives: by `_rcu` for maps made from a proof, by ownership for a detached table. Maps
/// made through [`pte_offset_map_unprotected`] carry no such guarantee; their caller promised it.
#[must_use = "dropping a PTE map unmaps it at once"]
pub struct PteMap<'a, B: PgtableBackend> {
    pub(crate) backend: &'a B,
    pub(crate) table: B::Table,
    pub(crate) pmdval: B::PmdSnapshot,
    pub(crate) kind: MapKind,
    addr: u64,
    /// The read section; also what makes every map `!Send` and `!Sync`, owned maps included.
    _rcu: Option<RcuGuard<'a, B::Rcu>>,
}

impl<'a, B: PgtableBackend> PteMap<'a, B> {
    /// Opens the map for the value of `pmd`, in the kernel's order: RCU first, then one read
    /// of the pmd, then classification of that snapshot.
    #[track_caller]
    pub(crate) fn open<P: Provenance>(
        pmd: &PmdRef<'_, 'a, B, P>,
        addr: u64,
        kind: MapKind,
        rcu: bool,
    ) -> Result<Self, NoMap> {
        let backend = pmd.backend;
        let guard = if rcu {
            Some(backend.rcu().read_lock())
        } else {
            None
        };
        let pmdval = P::read(backend, &pmd.src);
        let table = backend.pmd_table(&pmdval)?;
        // SAFETY: for a proof-carrying `P`, the table is protected while `guard` lives (case 3:
        // the section opened before the read; case 2: the caller's older section covers 'a;
        // case 1: the caller owns it). For `Unprotected` the caller of the unsafe entry point
        // promised protection; `kind` tells the backend which one this is.
        Ok(unsafe { Self::from_table(backend, table, pmdval, addr, kind, guard) })
    }

    /// Maps `table`, classified from `pmdval`.
    ///
    /// # Safety
    /// `table` is protected (see [`PgtableBackend`]) for `'a`: by `rcu` if given, otherwise by
    /// the caller's ownership (or, for [`MapKind::Unprotected`], the unsafe caller's promise).
    pub(crate) unsafe fn from_table(
        backend: &'a B,
        table: B::Table,
        pmdval: B::PmdSnapshot,
        addr: u64,
        kind: MapKind,
        rcu: Option<RcuGuard<'a, B::Rcu>>,
    ) -> Self {
        // SAFETY: the caller promises protection for as long as the map lives.
        unsafe { backend.pte_map(&table, kind) };
        // INVARIANT: as promised by the caller.
        PteMap {
            backend,
            table,
            pmdval,
            kind,
            addr,
            _rcu: rcu,
        }
    }

    fn index(&self, addr: u64) -> usize {
        self.backend.pte_index(addr)
    }

    /// Reads the PTE for the address the map was made for (`ptep_get(pte)`).
    pub fn pte(&self) -> B::Pte {
        self.ptep_get(self.addr)
    }

    /// The address the map was made for.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Reads the PTE for `addr` (`ptep_get`); `addr` selects the entry within this table.
    pub fn ptep_get(&self, addr: u64) -> B::Pte {
        self.ptep_get_index(self.index(addr))
    }

    /// Reads the PTE at `index`, modulo the table size.
    pub fn ptep_get_index(&self, index: usize) -> B::Pte {
        let index = index % self.backend.ptrs_per_pte();
        // SAFETY: the table is protected while the map lives (type invariant) and the index is
        // in range.
        unsafe { self.backend.ptep_get(&self.table, index, self.kind) }
    }

    /// Every PTE of the table, in order.
    pub fn entries(&self) -> impl Iterator<Item = B::Pte> + '_ {
        (0..self.backend.ptrs_per_pte()).map(move |i| self.ptep_get_index(i))
    }

    /// The pmd value this map was made from (the `pmdvalp` out-parameter of
    /// `__pte_offset_map`).
    pub fn pmdval(&self) -> B::PmdSnapshot {
        self.pmdval
    }

    /// The mapped table.
    pub fn table(&self) -> B::Table {
        self.table
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    pub(crate) fn set_index(&self, index: usize, pte: B::Pte) -> Result<(), B::Error> {
        let index = index % self.backend.ptrs_per_pte();
        // SAFETY: only called by write-capable states (`PteLocked<CanWrite>`, `PteMapMut`),
        // which hold the PTE lock with the table proven installed, or own the table.
        unsafe { self.backend.set_pte(&self.table, index, pte, self.kind) }
    }

    pub(crate) fn clear_index(&self, index: usize) -> B::Pte {
        let index = index % self.backend.ptrs_per_pte();
        // SAFETY: as `set_index`.
        unsafe {
            self.backend
                .ptep_get_and_clear(&self.table, index, self.kind)
        }
    }
}

impl<B: PgtableBackend> fmt::Debug for PteMap<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PteMap")
            .field("table", &self.table)
            .field("pmdval", &self.pmdval)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Maps the PTE table behind a protected pmd (`pte_offset_map`).
///
/// Compiles only when the pmd carries one of the three proofs ([`ProvesProtection`]). Opens an
/// RCU read section *before* reading the pmd (what makes case 3 safe), reads it once, and maps
/// the table named by that snapshot. The map cannot outlive the pmd's protection (`'a`).
///
/// # Errors
/// The kernel's "nomap" cases as a [`NoMap`]: none, migration, not present, huge leaf, bad. Any
/// map may fail when a table is removed concurrently; callers retry or treat it as none.
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::pte_offset_map;
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// let pfn = mmu.map_page(0x40_1000)?;
/// let mm = mmu.mmap_read_lock();
/// let pmd = mm.pmd_offset(0x40_1000)?.unwrap();
/// let map = pte_offset_map(&pmd, 0x40_1000).expect("a PTE table is installed");
/// assert_eq!(map.ptep_get(0x40_1000).pfn(), Some(pfn));
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// A pmd without a proof does not compile:
///
/// ```compile_fail,E0277
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{pte_offset_map, PmdRef};
///
/// let mmu = Mmu::new(MmuConfig::default()).unwrap();
/// let mm = mmu.mmap_read_lock();
/// let value = mm.pmd_offset(0).unwrap().unwrap().pmd_val();
/// let raw = PmdRef::unprotected(&mmu, value);
/// let _ = pte_offset_map(&raw, 0); // `Unprotected` does not prove protection
/// ```
#[track_caller]
pub fn pte_offset_map<'a, B, P>(
    pmd: &PmdRef<'_, 'a, B, P>,
    addr: u64,
) -> Result<PteMap<'a, B>, NoMap>
where
    B: PgtableBackend,
    P: ProvesProtection,
{
    PteMap::open(pmd, addr, MapKind::Map, true)
}

/// Maps the table behind a pmd value **without** any proof and without an RCU section.
///
/// This is the escape hatch for code whose protection the types cannot see, and the path the
/// audit tests use to show that a real use-after-free is detected.
///
/// # Safety
/// The caller guarantees that the table named by `pmd` is not freed (nor its frame reused) for
/// as long as the returned map lives: for example it holds an RCU read section of the backend's
/// domain that began before the value was read, or it owns the table. Breaking this is a
/// page-table use-after-free.
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
/// use typed_pgtable::provenance::{pte_offset_map_unprotected, PmdRef};
///
/// let mmu = Mmu::new(MmuConfig::default())?;
/// mmu.map_page(0x1000)?;
/// let mm = mmu.mmap_read_lock();
/// let value = mm.pmd_offset(0x1000)?.unwrap().pmd_val();
/// let raw = PmdRef::unprotected(&mmu, value);
/// // SAFETY: the mmap read lock is held and no thread retracts tables in this example.
/// let map = unsafe { pte_offset_map_unprotected(&raw, 0x1000) }.unwrap();
/// assert!(map.ptep_get(0x1000).is_present());
/// assert_eq!(mmu.audit().violations(), 0);
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
#[track_caller]
pub unsafe fn pte_offset_map_unprotected<'a, B: PgtableBackend>(
    pmd: &PmdRef<'_, 'a, B, Unprotected>,
    addr: u64,
) -> Result<PteMap<'a, B>, NoMap> {
    PteMap::open(pmd, addr, MapKind::Unprotected, false)
}

/// Unmaps a PTE map (`pte_unmap`); the same as dropping it.
pub fn pte_unmap<B: PgtableBackend>(map: PteMap<'_, B>) {
    drop(map)
}
