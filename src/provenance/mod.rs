//! Provenance-typed pmd references and the `pte_offset_map` family.
//!
//! # The model
//!
//! A PTE table can be removed from its pmd slot at any time by khugepaged, empty-table reclaim
//! or a THP collapse, and freed once no reader can be inside it. Mapping a table is therefore
//! safe only with a *proof* that it cannot be freed while mapped. There are exactly three
//! (Jann Horn's cases, linux-mm, June 2023):
//!
//! | marker | what the pmd is | why the table stays | made by |
//! |---|---|---|---|
//! | [`InTable`] (case 3) | a slot in a page table reached under a walk lock | `pte_offset_map` opens an RCU section *before* it reads the slot | a walk under an mmap/VMA/rmap token |
//! | [`CopiedUnderRcu<'g>`] (case 2) | a value copied inside an RCU section `'g` still open | the section began before the copy was read | [`pmdp_get_lockless`], a lockless walk |
//! | [`Detached`] (case 1) | a value naming a table the holder detached or withdrew | the holder owns it | [`DetachedPmd::pmd`] |
//!
//! A fourth marker, [`Unprotected`], tags a value with no proof (read after its guard ended,
//! built from bits). The map functions are bounded by the sealed trait [`ProvesProtection`],
//! implemented only for the three proofs, so mapping an `Unprotected` pmd does not compile and
//! the error names the three ways to get a proof.
//!
//! # What each marker allows
//!
//! | function | `InTable` | `CopiedUnderRcu<'g>` | `Detached` | `Unprotected` |
//! |---|---|---|---|---|
//! | [`pte_offset_map`] → [`PteMap`] (read-only) | yes | yes, lives ≤ `'g` | yes, borrows the owner | no (compile error) |
//! | [`pte_offset_map_lock`] → [`PteLocked`] | [`Attached`]: writes | [`Unverified`]: no writes (a copy rechecked against itself proves nothing) | [`Owned`]: writes | no |
//! | [`pte_offset_map_ro_nolock`] → lock gives [`ReadOnly`] | yes | no (needs the slot) | no | no |
//! | [`pte_offset_map_rw_nolock`] → lock gives [`Unverified`], [`PteLocked::revalidate`] → `Attached` | yes | no | no | no |
//! | [`DetachedPmd::pte_offset_map_mut`] → [`PteMapMut`] (writes, no lock) | — | — | owner only | — |
//! | [`pte_offset_map_unprotected`] (`unsafe`) | — | — | — | yes |
//!
//! Every map holds an RCU read section and unmaps on drop (`pte_unmap`); every lock unlocks on
//! drop (`pte_unmap_unlock`). All are `!Send`: a read section, a kmap and a spinlock belong to
//! the thread that took them.
//!
//! # Detached tables
//!
//! [`DetachedPmd`] owns a table outside any slot and is `#[must_use]`. A [`Fresh`] one (just
//! allocated, or withdrawn from a deposit) was never visible to walkers and may be freed at once,
//! deposited or populated. A [`Retired`] one (taken out of a slot by [`pmdp_collapse_flush`]
//! under the PMD and PTE locks) may still be read by lockless walkers that read the slot before,
//! so the only free is [`DetachedPmd::pte_free_defer`], after a grace period.
//!
//! # Backends
//!
//! Nothing here knows a memory layout: everything goes through [`PgtableBackend`], which the
//! in-memory [`Mmu`](crate::mmu::Mmu) implements and a kernel-like project can implement for
//! its own tables, locks and RCU.

mod backend;
mod detached;
mod error;
mod lock;
mod map;
mod marker;
mod pmd;
mod walk;

pub use backend::{MapKind, PgtableBackend};
pub use detached::{
    DetachedPmd, ExclusiveAccess, PteMapMut, pmd_clear_exclusive, pmdp_collapse_flush,
};
pub use error::PgtableError;
pub use lock::{
    PteLocked, PteNolock, PteRoNolock, PteRwNolock, pte_offset_map_lock, pte_offset_map_ro_nolock,
    pte_offset_map_rw_nolock, pte_unmap_unlock,
};
pub use map::{PteMap, pte_offset_map, pte_offset_map_unprotected, pte_unmap};
#[doc(hidden)]
pub use marker::CopiedSource;
pub use marker::{
    Access, Attached, CanWrite, CopiedUnderRcu, DetachState, Detached, Fresh, InTable, Owned,
    Provenance, ProvesProtection, ReadOnly, Retired, Unprotected, Unverified,
};
pub use pmd::{PmdLockGuard, PmdRef, pmd_lock, pmd_trylock, pmdp_get_lockless};
pub use walk::{InstallLock, LocklessWalk, WalkLock};

static_assertions::assert_eq_size!(InTable, ());
static_assertions::assert_eq_size!(Detached, ());
static_assertions::assert_eq_size!(CopiedUnderRcu<'static>, ());
static_assertions::assert_eq_size!(Unprotected, ());
static_assertions::assert_eq_size!(Attached, ());
static_assertions::assert_eq_size!(Unverified, ());
static_assertions::assert_not_impl_any!(Unprotected: ProvesProtection);
static_assertions::assert_impl_all!(InTable: ProvesProtection);
static_assertions::assert_impl_all!(Detached: ProvesProtection);
static_assertions::assert_impl_all!(CopiedUnderRcu<'static>: ProvesProtection);
static_assertions::assert_not_impl_any!(CopiedUnderRcu<'static>: Send, Sync);
static_assertions::assert_not_impl_any!(Unverified: CanWrite);
static_assertions::assert_not_impl_any!(ReadOnly: CanWrite);
