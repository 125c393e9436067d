//! Kernel page-table operations written once, over the provenance traits.
//!
//! # The model
//!
//! The hard part of each operation below is not its bookkeeping (which folio gets a
//! reference, which counter moves) but the order of its protocol steps: read, pin, recheck for
//! GUP-fast; PMD lock, PTE lock with its `pmd_same` recheck, the caller's own recheck, clear,
//! deferred free for a retract; fill through the owner's map, then publish under the PMD lock
//! for a split. Those orders are written here once, generically over [`PgtableBackend`], a
//! [`WalkLock`] and [`LocklessWalk`](crate::provenance::LocklessWalk), with the bookkeeping
//! left to the caller through a closure or a small trait. The in-memory
//! [`Mmu`](crate::mmu::Mmu) runs its GUP-fast, its retracts and its splits through these
//! functions; a kernel-like backend gets the same orders by calling them.
//!
//! | operation | kernel | here |
//! |---|---|---|
//! | GUP-fast of one page | `gup_fast_pte_range`, `gup_fast_pmd_leaf` | [`gup_fast_one`] with a [`GupPin`] |
//! | detach a PTE table | the core of `retract_page_tables` | [`detach_pte_table`] |
//! | retract a PTE table | `retract_page_tables` for one slot | [`retract_pte_table`] |
//! | fill a fresh table | `__split_huge_pmd_locked`'s PTE loop | [`fill_pte_table`] |
//! | fill and install | `__pte_alloc` with the entries prepared | [`populate_filled`] |
//!
//! Nothing here is `unsafe`: every step is a call of the typed API, so each function is safe
//! for any backend that keeps its trait contracts.
//!
//! [`PgtableBackend`]: crate::provenance::PgtableBackend
//! [`WalkLock`]: crate::provenance::WalkLock

mod fill;
mod gup;
mod retract;

pub use fill::{fill_pte_table, populate_filled};
pub use gup::{GupPin, PinStage, gup_fast_one};
pub use retract::{detach_pte_table, retract_pte_table};
