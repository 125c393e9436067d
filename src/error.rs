//! Typed errors.
//!
//! Every fallible operation of the crate returns one of these instead of panicking, and an
//! operation that fails leaves the MMU exactly as it found it. Built with
//! [`thiserror`](https://docs.rs/thiserror) in `no_std` mode.
//!
//! [`Error`] is the in-memory MMU's error (its backend error type); the provenance layer's
//! backend-neutral one is [`PgtableError`], which converts
//! into it. [`NoMap`] (the nomap cases) and [`Rejected`] (a refused value handed back) are
//! shared by both.

use crate::provenance::PgtableError;

/// What went wrong in an operation of the in-memory MMU (and the MMU's backend error type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The frame arena cannot supply the frames the operation needs. Nothing was changed.
    #[error("out of physical frames: the operation needs {needed}, {free} are free")]
    OutOfFrames {
        /// Frames the operation needed.
        needed: usize,
        /// Frames that were free.
        free: usize,
    },
    /// The virtual address is not canonical (bits 63..47 are not a sign extension of bit 47).
    #[error("virtual address {addr:#x} is not canonical")]
    NonCanonical {
        /// The offending address.
        addr: u64,
    },
    /// The address is not aligned to the size of the mapping asked for.
    #[error("address {addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The offending address.
        addr: u64,
        /// The alignment the operation needs.
        align: u64,
    },
    /// The address lies outside the virtual space the MMU was configured with.
    #[error("address {addr:#x} is outside the configured space [0, {limit:#x})")]
    OutOfRange {
        /// The offending address.
        addr: u64,
        /// The first address past the configured space.
        limit: u64,
    },
    /// A mapping already exists at the address.
    #[error("{addr:#x} is already mapped")]
    AlreadyMapped {
        /// The address.
        addr: u64,
    },
    /// Nothing is mapped at the address.
    #[error("{addr:#x} is not mapped")]
    NotMapped {
        /// The address.
        addr: u64,
    },
    /// A huge (2 MiB) mapping covers the address, so a 4 KiB operation cannot proceed.
    #[error("a huge mapping covers {addr:#x}")]
    HugeInTheWay {
        /// The address.
        addr: u64,
    },
    /// A PTE table (possibly empty) covers the 2 MiB range, so a huge mapping cannot be made
    /// or unmapped there.
    #[error("a PTE table covers the huge range at {addr:#x}")]
    TableInTheWay {
        /// The start of the 2 MiB range.
        addr: u64,
    },
    /// The pmd slot no longer holds the value a map was made from (`pmd_same` failed): the
    /// table was removed or replaced. Unlock and retry.
    #[error("the pmd changed since it was read (pmd_same failed)")]
    PmdChanged,
    /// The pmd slot is not empty, so a table cannot be installed there (or a table is already
    /// deposited on it).
    #[error("the pmd slot is occupied")]
    SlotOccupied,
    /// The lock given does not cover this pmd slot: a PMD lock of another PMD table, or a VMA
    /// lock of another VMA.
    #[error("the lock does not cover this pmd slot")]
    SlotNotCovered,
    /// A PTE may map only a data page in use (or the zero page, as a special entry): this
    /// frame is free, a page table, or out of range.
    #[error("frame {pfn:#x} is not a data page in use, so no PTE may map it")]
    NotADataPage {
        /// The frame.
        pfn: u64,
    },
    /// The pmd names no PTE table.
    #[error("no PTE table: {0}")]
    NoTable(#[from] NoMap),
    /// A range of zero length was given.
    #[error("empty range at {addr:#x}")]
    EmptyRange {
        /// The start of the range.
        addr: u64,
    },
    /// The address is outside the VMA (or the range) the walk lock covers.
    #[error("{addr:#x} is outside the VMA the lock covers")]
    OutsideVma {
        /// The address.
        addr: u64,
    },
    /// A VMA straddles the edge of the range (this model does not split VMAs).
    #[error("the VMA at {addr:#x} straddles the edge of the range")]
    PartialVma {
        /// The start of the VMA.
        addr: u64,
    },
    /// The operation needs a VMA of a certain kind there, and there is none.
    #[error("no suitable VMA covers {addr:#x}")]
    NotInVma {
        /// The address.
        addr: u64,
    },
    /// A guard, pmd reference or table of one MMU (or RCU domain) was used with another.
    #[error("the guard or pmd belongs to a different MMU or RCU domain")]
    WrongMmu,
    /// The lock checker found a lock call that can deadlock (see `mmu::lockdep`); nothing was
    /// locked or changed.
    #[error("{rule}; held since {held_at}, taken at {taken_at}")]
    LockViolation {
        /// The rule broken.
        rule: &'static str,
        /// Where the lock (or read section) that is in the way was taken.
        held_at: &'static core::panic::Location<'static>,
        /// Where the lock was asked for.
        taken_at: &'static core::panic::Location<'static>,
    },
    /// The configuration asked for is unusable.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Why.
        reason: &'static str,
    },
}

/// Why `pte_offset_map` and its family found no PTE table behind a pmd value.
///
/// These are the kernel's "nomap" cases of `__pte_offset_map`: the caller treats them as "no
/// table here" (and usually retries or falls back), never as a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoMap {
    /// The pmd is empty (`pmd_none`).
    #[error("pmd is none")]
    None,
    /// The pmd is a non-present migration entry (`is_pmd_migration_entry`).
    #[error("pmd is a migration entry")]
    Migration,
    /// The pmd is non-present but not a migration entry (`!pmd_present`).
    #[error("pmd is not present")]
    NotPresent,
    /// The pmd maps a huge page itself (`pmd_trans_huge`), not a PTE table.
    #[error("pmd is a huge leaf")]
    Huge,
    /// The pmd is malformed (`pmd_bad`).
    #[error("pmd is malformed")]
    Bad,
}

impl From<PgtableError> for Error {
    /// The MMU's name for each provenance-level refusal. An allocation failure of one table is
    /// `OutOfFrames { needed: 1, free: 0 }` (a one-frame allocation fails only with none free).
    fn from(e: PgtableError) -> Error {
        match e {
            PgtableError::OutOfMemory => Error::OutOfFrames { needed: 1, free: 0 },
            PgtableError::WrongBackend => Error::WrongMmu,
            PgtableError::SlotNotCovered => Error::SlotNotCovered,
            PgtableError::PmdChanged => Error::PmdChanged,
            PgtableError::SlotOccupied => Error::SlotOccupied,
            PgtableError::TableInTheWay => Error::TableInTheWay { addr: 0 },
            PgtableError::NotHuge | PgtableError::EntryRefused => Error::NotMapped { addr: 0 },
            PgtableError::NoSlot { addr } => Error::NotMapped { addr },
            PgtableError::NoTable(n) => Error::NoTable(n),
            PgtableError::Misaligned { addr, align } => Error::Misaligned { addr, align },
        }
    }
}

/// A consuming operation refused its input and hands it back unchanged.
///
/// Used where dropping the input would lose state, e.g. a detached table that could not be
/// populated into a slot: the caller gets the table back and must still consume it. `E` is the
/// backend's error type (the in-memory MMU's [`Error`] by default).
#[derive(Debug)]
#[must_use = "the rejected value still has to be consumed"]
pub struct Rejected<T, E = Error> {
    /// Why the operation refused.
    pub error: E,
    /// The input, unchanged.
    pub value: T,
}

impl<T, E: core::fmt::Display> core::fmt::Display for Rejected<T, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.error, f)
    }
}
