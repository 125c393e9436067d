//! The provenance layer's own errors: what a backend or a provenance call can refuse, in terms
//! any backend shares.
//!
//! A backend chooses its error type ([`PgtableBackend::Error`](super::PgtableBackend::Error)):
//! a kernel-like backend takes [`PgtableError`] itself; the in-memory MMU keeps its richer
//! [`crate::Error`] (exact frame counts, the pfn of a refused entry) and converts from
//! `PgtableError` with `From`. Every provenance call returns the backend's type, so the caller
//! of an MMU operation and the caller of a heap-backend walk each see their own errors.

use crate::error::NoMap;

/// Why a provenance call or a backend refused, in backend-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgtableError {
    /// The backend could not allocate a page table (`pte_alloc_one` failed). Nothing changed.
    #[error("out of memory for a page table")]
    OutOfMemory,
    /// A guard, lock, pmd reference or table of one backend (or RCU domain) was used with
    /// another.
    #[error("the guard, lock or pmd belongs to another backend or RCU domain")]
    WrongBackend,
    /// The lock given does not cover this pmd slot: the PMD lock of another PMD table, or a
    /// walk lock (a VMA lock) of another range.
    #[error("the lock does not cover this pmd slot")]
    SlotNotCovered,
    /// The slot no longer holds the value a map was made from (`pmd_same` failed): the table
    /// was removed or replaced. Unlock and retry.
    #[error("the pmd changed since it was read (pmd_same failed)")]
    PmdChanged,
    /// The slot is not empty, so no table can be installed there, or a table is already
    /// deposited on it.
    #[error("the pmd slot is occupied")]
    SlotOccupied,
    /// A deposit was asked for on a slot that names a PTE table: the deposit would be
    /// stranded.
    #[error("a PTE table is in the slot")]
    TableInTheWay,
    /// A deposit was asked for on a slot that holds no huge entry.
    #[error("the slot holds no huge entry")]
    NotHuge,
    /// The walk found no slot for the address: an upper level is missing.
    #[error("no pmd slot for {addr:#x}: an upper level is missing")]
    NoSlot {
        /// The address.
        addr: u64,
    },
    /// The pmd names no PTE table.
    #[error("no PTE table: {0}")]
    NoTable(#[from] NoMap),
    /// An address or frame that must start a block of `align` bytes does not.
    #[error("{addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The address.
        addr: u64,
        /// The alignment needed.
        align: u64,
    },
    /// The backend refused to write this entry (a backend-specific reason, e.g. a PTE naming
    /// memory it cannot map).
    #[error("the backend refused the entry")]
    EntryRefused,
}
