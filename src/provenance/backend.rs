//! The backend trait: what the provenance layer needs from a page-table implementation.

use super::error::PgtableError;
use crate::error::NoMap;
use crate::rcu::RcuDomain;
use core::fmt::Debug;

/// Which map operation touches a table; passed to the backend so that an audit can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MapKind {
    /// `pte_offset_map`.
    Map,
    /// `pte_offset_map_lock`.
    MapLock,
    /// `pte_offset_map_ro_nolock`.
    RoNolock,
    /// `pte_offset_map_rw_nolock`.
    RwNolock,
    /// A writable map of a detached table the caller owns.
    Owned,
    /// The `unsafe` unprotected path.
    Unprotected,
}

impl MapKind {
    /// The kernel name of the operation.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Map => "pte_offset_map",
            MapKind::MapLock => "pte_offset_map_lock",
            MapKind::RoNolock => "pte_offset_map_ro_nolock",
            MapKind::RwNolock => "pte_offset_map_rw_nolock",
            MapKind::Owned => "pte_offset_map(detached)",
            MapKind::Unprotected => "pte_offset_map_unprotected",
        }
    }
}

/// A page-table implementation the provenance layer can drive.
///
/// The provenance layer knows nothing of memory layout, entry encoding, locks or RCU; it asks
/// the backend. The in-memory [`Mmu`](crate::mmu::Mmu) is one backend; a kernel-like project
/// implements this trait for its own page tables, RCU and split locks.
///
/// The `unsafe fn`s take a [`Table`](Self::Table) handle whose memory is valid only while the
/// caller holds a protection proof. The provenance layer calls them only with such a proof; a
/// backend may assume it.
///
/// # Methods
///
/// 17 required, 7 with a default. "Promise" names the item of the safety contract below
/// that the method carries, or what a caller may rely on.
///
/// | method | required | what it must do |
/// |---|---|---|
/// | [`rcu`](Self::rcu) | yes | the domain whose grace periods protect PTE tables (1) |
/// | [`pmdp_get_lockless`](Self::pmdp_get_lockless) | yes | one atomic read of a slot, Acquire (3) |
/// | [`pmd_same`](Self::pmd_same) | default `==` | compare the entries alone (2: the recheck) |
/// | [`pmd_table`](Self::pmd_table) | yes | a table only for a value that names one of this backend's PTE tables, else the nomap reason (4) |
/// | [`pmd_of_table`](Self::pmd_of_table) | yes | the value [`pmd_populate`](Self::pmd_populate) would store for the table |
/// | [`pte_index`](Self::pte_index), [`ptrs_per_pte`](Self::ptrs_per_pte) | default 4 KiB granule, 512 | the entry of an address; a power of two |
/// | [`pte_map`](Self::pte_map) | default no-op | a hook before a map's first access |
/// | [`ptep_get`](Self::ptep_get) | yes | one atomic read of a PTE |
/// | [`set_pte`](Self::set_pte) | yes | one atomic write, or a refusal that writes nothing |
/// | [`ptep_get_and_clear`](Self::ptep_get_and_clear) | yes | one atomic exchange with the none entry |
/// | [`pte_lock`](Self::pte_lock), [`pte_unlock`](Self::pte_unlock) | yes | the table's split lock, valid as long as the table (1) |
/// | [`pmd_lock`](Self::pmd_lock), [`pmd_trylock`](Self::pmd_trylock), [`pmd_unlock`](Self::pmd_unlock) | yes | the lock of the slot's PMD table; the trylock never waits |
/// | [`same_pmd_lock`](Self::same_pmd_lock) | default: the same slot only | never say yes for two different locks |
/// | [`pmd_populate`](Self::pmd_populate) | yes | a Release store of the table's value, after every write to it (3) |
/// | [`pmdp_collapse_flush`](Self::pmdp_collapse_flush) | yes | clear the slot and flush the TLB; the only clear of a table slot besides exclusivity (2) |
/// | [`pgtable_trans_huge_deposit`](Self::pgtable_trans_huge_deposit), [`pgtable_trans_huge_withdraw`](Self::pgtable_trans_huge_withdraw) | default: no deposits | park a table on a huge pmd, at most one per slot |
/// | [`pte_alloc_one`](Self::pte_alloc_one) | yes | a zeroed, unpublished table with its lock |
/// | [`pte_free`](Self::pte_free) | yes | free at once (the caller proved no walker can reach it) |
/// | [`pte_free_defer`](Self::pte_free_defer) | yes | free after a grace period of [`rcu`](Self::rcu), lock included (1) |
///
/// # Safety
///
/// Implementors promise:
///
/// 1. **RCU covers tables.** A PTE table reachable from a slot is freed only through
///    [`pte_free_defer`](Self::pte_free_defer) (after a grace period of [`rcu`](Self::rcu)) or
///    through an exclusive path no walker can race with; the table's memory **and its lock**
///    stay valid until then.
/// 2. **Removal takes both locks.** A slot that names a PTE table is cleared or replaced only
///    while its PMD lock and the table's PTE lock are held (or under exclusivity), so that
///    `pmd_same` under the PTE lock proves the table is still installed.
/// 3. **Publication after fill.** [`pmd_populate`](Self::pmd_populate) makes every earlier
///    write to the table visible to a reader that sees the new slot value.
/// 4. **Classification never misleads.** [`pmd_table`](Self::pmd_table) returns a table only
///    for a value that names a PTE table of this backend.
pub unsafe trait PgtableBackend: Sync {
    /// The RCU domain that protects this backend's PTE tables.
    type Rcu: RcuDomain;
    /// The backend's error type: [`PgtableError`] itself, or a richer one that converts from
    /// it (the in-memory MMU's [`Error`](crate::Error)). Every provenance call returns it.
    type Error: From<PgtableError> + Debug;
    /// A pmd slot inside a PMD table.
    type PmdSlot: Sync;
    /// A pmd value read from a slot (`pmd_t`), with whatever the backend needs to know of it.
    type PmdSnapshot: Copy + Debug + PartialEq;
    /// A handle naming one PTE table.
    type Table: Copy + Debug;
    /// A PTE value (`pte_t`).
    type Pte: Copy + Debug + PartialEq;

    /// The RCU domain.
    fn rcu(&self) -> &Self::Rcu;

    /// Reads a slot once (`pmdp_get_lockless`).
    fn pmdp_get_lockless(&self, slot: &Self::PmdSlot) -> Self::PmdSnapshot;

    /// Compares two pmd values (`pmd_same`): raw bits only. The default is `==`; a backend
    /// whose snapshot carries more than the entry (the in-memory MMU's carries a generation
    /// for its audit) compares the entry alone.
    fn pmd_same(&self, a: &Self::PmdSnapshot, b: &Self::PmdSnapshot) -> bool {
        a == b
    }

    /// Classifies a pmd value: the PTE table it names, or why it names none.
    fn pmd_table(&self, pmd: &Self::PmdSnapshot) -> Result<Self::Table, NoMap>;

    /// The pmd value that names `table` (`pmd_populate` on a local copy).
    fn pmd_of_table(&self, table: &Self::Table) -> Self::PmdSnapshot;

    /// Index of the PTE for `addr` inside its table (`pte_index`). The default is the 4 KiB
    /// granule's: bits 12 and up, modulo [`ptrs_per_pte`](Self::ptrs_per_pte) (a power of two).
    fn pte_index(&self, addr: u64) -> usize {
        ((addr >> 12) as usize) & (self.ptrs_per_pte() - 1)
    }

    /// Number of PTEs in a table (`PTRS_PER_PTE`), a power of two. The default is 512 (4 KiB
    /// tables of 8-byte entries: x86-64, arm64 with a 4 KiB granule).
    fn ptrs_per_pte(&self) -> usize {
        512
    }

    /// Called once when a table is mapped (`__pte_map`), before any access through the map: a
    /// hook for a kmap or an audit. The default does nothing.
    ///
    /// # Safety
    /// `table` is protected (see the trait docs) for as long as the map lives, unless `kind` is
    /// [`MapKind::Unprotected`].
    unsafe fn pte_map(&self, table: &Self::Table, kind: MapKind) {
        let _ = (table, kind);
    }

    /// Reads one PTE (`ptep_get`).
    ///
    /// # Safety
    /// `table` is protected; `index < ptrs_per_pte()`.
    unsafe fn ptep_get(&self, table: &Self::Table, index: usize, kind: MapKind) -> Self::Pte;

    /// Writes one PTE (`set_pte`). A backend may refuse a value it cannot map (the in-memory
    /// MMU refuses a present entry that does not name a data page in use), and then writes
    /// nothing.
    ///
    /// # Safety
    /// `table` is protected and the caller holds its PTE lock with the table proven installed,
    /// or owns the table; `index < ptrs_per_pte()`.
    ///
    /// # Errors
    /// The backend's reason for refusing `pte`.
    unsafe fn set_pte(
        &self,
        table: &Self::Table,
        index: usize,
        pte: Self::Pte,
        kind: MapKind,
    ) -> Result<(), Self::Error>;

    /// Clears one PTE and returns the old value (`ptep_get_and_clear`).
    ///
    /// # Safety
    /// As [`set_pte`](Self::set_pte).
    unsafe fn ptep_get_and_clear(
        &self,
        table: &Self::Table,
        index: usize,
        kind: MapKind,
    ) -> Self::Pte;

    /// Takes the table's PTE lock (`spin_lock(pte_lockptr())`).
    ///
    /// # Safety
    /// `table` is protected (its lock lives as long as its memory).
    unsafe fn pte_lock(&self, table: &Self::Table);

    /// Releases the table's PTE lock.
    ///
    /// # Safety
    /// The caller holds it.
    unsafe fn pte_unlock(&self, table: &Self::Table);

    /// Takes the PMD lock of the table that holds `slot` (`pmd_lock`).
    ///
    /// # Safety
    /// `slot` is one of this backend's slots (as every `InTable` reference's is).
    unsafe fn pmd_lock(&self, slot: &Self::PmdSlot);

    /// Tries to take the PMD lock of `slot` without waiting (`spin_trylock(pmd_lockptr())`).
    ///
    /// # Safety
    /// As [`pmd_lock`](Self::pmd_lock).
    unsafe fn pmd_trylock(&self, slot: &Self::PmdSlot) -> bool;

    /// Whether the PMD lock of `a` is also the lock of `b` (both slots in one PMD table). The
    /// default, the same slot only, is always true when it says yes; a backend with one lock
    /// per PMD table says so for every pair of slots in a table.
    ///
    /// # Safety
    /// Both are this backend's slots.
    unsafe fn same_pmd_lock(&self, a: &Self::PmdSlot, b: &Self::PmdSlot) -> bool {
        core::ptr::eq(a, b)
    }

    /// Releases the PMD lock of `slot`.
    ///
    /// # Safety
    /// The caller holds it.
    unsafe fn pmd_unlock(&self, slot: &Self::PmdSlot);

    /// Installs `table` in the empty `slot` (`pmd_populate`), with release ordering.
    ///
    /// # Safety
    /// The caller holds the slot's PMD lock, the slot is none, and the caller owns `table`.
    unsafe fn pmd_populate(&self, slot: &Self::PmdSlot, table: &Self::Table);

    /// Clears a slot that names a PTE table and flushes the TLB for it (`pmdp_collapse_flush`);
    /// returns the old value.
    ///
    /// # Safety
    /// The caller holds the slot's PMD lock and the PTE lock of the table it names, or holds
    /// exclusive access to the slot (see [`ExclusiveAccess`](super::ExclusiveAccess)).
    unsafe fn pmdp_collapse_flush(&self, slot: &Self::PmdSlot) -> Self::PmdSnapshot;

    /// Parks a table on the slot (`pgtable_trans_huge_deposit`), which holds a huge entry.
    /// Returns `false`, and keeps nothing, if a table is already deposited there.
    ///
    /// The default, for a backend without huge pmds, keeps nothing.
    ///
    /// # Safety
    /// The caller holds the slot's PMD lock and owns `table`, which no walker can reach; on
    /// `true` the ownership passes to the slot.
    unsafe fn pgtable_trans_huge_deposit(&self, slot: &Self::PmdSlot, table: &Self::Table) -> bool {
        let _ = (slot, table);
        false
    }

    /// Takes a parked table back (`pgtable_trans_huge_withdraw`). The default has none.
    ///
    /// # Safety
    /// The caller holds the slot's PMD lock.
    unsafe fn pgtable_trans_huge_withdraw(&self, slot: &Self::PmdSlot) -> Option<Self::Table> {
        let _ = slot;
        None
    }

    /// Allocates a zeroed, unpublished PTE table with an initialised lock (`pte_alloc_one`).
    ///
    /// # Errors
    /// The backend's allocation failure ([`PgtableError::OutOfMemory`] or its own).
    fn pte_alloc_one(&self) -> Result<Self::Table, Self::Error>;

    /// Frees a table at once (`pte_free`).
    ///
    /// # Safety
    /// No walker can hold or reach `table`, and the caller owns it.
    unsafe fn pte_free(&self, table: &Self::Table);

    /// Frees a table after a grace period of [`rcu`](Self::rcu) (`pte_free_defer`).
    ///
    /// # Safety
    /// `table` is unreachable from every slot and the caller owns it.
    unsafe fn pte_free_defer(&self, table: &Self::Table);
}
