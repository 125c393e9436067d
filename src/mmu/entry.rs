//! x86-64 entry encoding: PTEs, pmd values and their classification.

use core::fmt;

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User-accessible.
pub const USER: u64 = 1 << 2;
/// Accessed (set by the hardware walker on use).
pub const ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const DIRTY: u64 = 1 << 6;
/// Page size: at the pmd level, a 2 MiB leaf (`pmd_trans_huge`).
pub const HUGE: u64 = 1 << 7;
/// Software bit: a special page with no refcount (the zero page); GUP-fast refuses it.
pub const SPECIAL: u64 = 1 << 9;
/// Software bit: an anonymous page (its only copy is this mapping).
pub const ANON: u64 = 1 << 10;
/// Bits 12..=51: the physical frame number.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits 52..=62, which this model reserves: a present entry with any of them set is malformed
/// (`pmd_bad`).
pub const RESERVED: u64 = 0x7ff0_0000_0000_0000;
/// The swap type that marks a migration entry (bits 1..=5 of a non-present entry).
pub const MIGRATION_TYPE: u64 = 0x1f;
/// What a freed page-table frame is filled with: present with reserved bits set, so any reader
/// that sees it classifies it as malformed.
pub const POISON: u64 = 0x7ff0_0dea_dbee_f001;

const SWAP_TYPE_SHIFT: u32 = 1;
const SWAP_TYPE_MASK: u64 = 0x1f << SWAP_TYPE_SHIFT;

/// Flags of a table entry at any level above the PTEs.
pub const TABLE_FLAGS: u64 = PRESENT | RW | USER | ACCESSED;

/// What an entry one level above the PTEs (a pmd) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PmdKind {
    /// Empty.
    None,
    /// A PTE table at this frame.
    Table(u64),
    /// A 2 MiB page starting at this frame.
    Huge(u64),
    /// A non-present migration entry.
    Migration,
    /// Non-present, not migration.
    NotPresent,
    /// Malformed.
    Bad,
}

/// Classifies a raw entry one level above the PTEs. `frames` is the size of physical memory;
/// frame 0 is never a page table (a zero pfn in a present table entry is malformed).
pub fn classify_pmd(raw: u64, frames: u64) -> PmdKind {
    if raw == 0 {
        return PmdKind::None;
    }
    if raw & PRESENT == 0 {
        return if (raw & SWAP_TYPE_MASK) >> SWAP_TYPE_SHIFT == MIGRATION_TYPE {
            PmdKind::Migration
        } else {
            PmdKind::NotPresent
        };
    }
    if raw & RESERVED != 0 {
        return PmdKind::Bad;
    }
    let pfn = (raw & ADDR_MASK) >> 12;
    if raw & HUGE != 0 {
        return if pfn % 512 == 0 && pfn + 512 <= frames {
            PmdKind::Huge(pfn)
        } else {
            PmdKind::Bad
        };
    }
    if pfn == 0 || pfn >= frames {
        return PmdKind::Bad;
    }
    PmdKind::Table(pfn)
}

/// The raw entry that names a table at `pfn`.
pub fn table_entry(pfn: u64) -> u64 {
    (pfn << 12) | TABLE_FLAGS
}

/// The raw entry of a 2 MiB leaf at `pfn`.
pub fn huge_entry(pfn: u64) -> u64 {
    (pfn << 12) | TABLE_FLAGS | DIRTY | HUGE
}

/// A raw non-present migration entry with `offset`.
pub fn migration_entry(offset: u64) -> u64 {
    ((offset << 12) & ADDR_MASK) | (MIGRATION_TYPE << SWAP_TYPE_SHIFT)
}

/// A page-table entry (`pte_t`) in x86-64 format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pte(u64);

impl Pte {
    /// The empty entry (`pte_none`).
    pub const fn none() -> Pte {
        Pte(0)
    }

    /// A present, writable user page at `pfn`.
    pub fn page(pfn: u64) -> Pte {
        Pte(((pfn << 12) & ADDR_MASK) | PRESENT | RW | USER | ACCESSED)
    }

    /// A present, writable anonymous page at `pfn`.
    pub fn anon_page(pfn: u64) -> Pte {
        Pte(Pte::page(pfn).0 | ANON)
    }

    /// A read-only special mapping of `pfn` (the zero page).
    pub fn special(pfn: u64) -> Pte {
        Pte(((pfn << 12) & ADDR_MASK) | PRESENT | USER | ACCESSED | SPECIAL)
    }

    /// Special (no refcount).
    pub const fn is_special(self) -> bool {
        self.0 & SPECIAL != 0
    }

    /// Anonymous.
    pub const fn is_anon(self) -> bool {
        self.0 & ANON != 0
    }

    /// A non-present migration entry.
    pub fn migration(offset: u64) -> Pte {
        Pte(migration_entry(offset))
    }

    /// Wraps raw bits.
    pub const fn from_raw(raw: u64) -> Pte {
        Pte(raw)
    }

    /// The raw bits.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Empty.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Present and well formed.
    pub const fn is_present(self) -> bool {
        self.0 & PRESENT != 0 && self.0 & RESERVED == 0
    }

    /// Present with reserved bits set, e.g. the poison of a freed table.
    pub const fn is_bad(self) -> bool {
        self.0 & PRESENT != 0 && self.0 & RESERVED != 0
    }

    /// The frame a present entry maps.
    pub const fn pfn(self) -> Option<u64> {
        if self.is_present() {
            Some((self.0 & ADDR_MASK) >> 12)
        } else {
            None
        }
    }

    /// Accessed bit set.
    pub const fn is_young(self) -> bool {
        self.0 & ACCESSED != 0
    }

    /// The same entry with the accessed bit cleared (`pte_mkold`).
    pub const fn mkold(self) -> Pte {
        Pte(self.0 & !ACCESSED)
    }

    /// The same entry with the accessed bit set (`pte_mkyoung`).
    pub const fn mkyoung(self) -> Pte {
        Pte(self.0 | ACCESSED)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x})", self.0)
    }
}

/// A pmd value read from a slot (`pmd_t`), with the generation of the table it named when read.
///
/// The generation is the audit's witness: a map made from this value checks that the table's
/// frame has not been freed since (see [`Audit`](super::Audit)). `pmd_same` compares only the
/// raw bits, as in the kernel.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PmdVal {
    pub(crate) raw: u64,
    pub(crate) generation: u32,
    pub(crate) frames: u32,
}

impl PmdVal {
    /// The raw bits.
    pub fn raw(&self) -> u64 {
        self.raw
    }

    /// What the value holds.
    pub fn kind(&self) -> PmdKind {
        classify_pmd(self.raw, u64::from(self.frames))
    }

    /// The generation of the named table's frame when the value was read (0 if it names no
    /// table).
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for PmdVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PmdVal({:#x}, {:?}, generation {})",
            self.raw,
            self.kind(),
            self.generation
        )
    }
}

/// A handle naming one PTE table: its frame and the generation the map expects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TableRef {
    /// The frame.
    pub pfn: u64,
    /// The frame's generation when the pmd value was read.
    pub generation: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn page_roundtrip(pfn in 1u64..(1 << 40)) {
            let p = Pte::page(pfn);
            prop_assert!(p.is_present());
            prop_assert_eq!(p.pfn(), Some(pfn));
            prop_assert!(!p.mkold().is_young());
            prop_assert_eq!(p.mkold().mkyoung(), p);
        }

        #[test]
        fn table_entry_classifies(pfn in 1u64..4096) {
            prop_assert_eq!(classify_pmd(table_entry(pfn), 4096), PmdKind::Table(pfn));
            prop_assert_eq!(classify_pmd(table_entry(pfn), pfn), PmdKind::Bad);
        }

        #[test]
        fn huge_entry_classifies(k in 0u64..8) {
            let pfn = k * 512;
            prop_assert_eq!(classify_pmd(huge_entry(pfn), 4096), PmdKind::Huge(pfn));
        }

        #[test]
        fn migration_is_not_present(off in 0u64..(1 << 30)) {
            prop_assert_eq!(classify_pmd(migration_entry(off), 4096), PmdKind::Migration);
            prop_assert!(!Pte::migration(off).is_present());
        }

        #[test]
        fn any_bits_classify_without_panic(raw in any::<u64>()) {
            let _ = classify_pmd(raw, 4096);
            let _ = Pte::from_raw(raw).pfn();
        }
    }

    #[test]
    fn poison_is_bad() {
        assert_eq!(classify_pmd(POISON, 1 << 20), PmdKind::Bad);
        assert!(Pte::from_raw(POISON).is_bad());
        assert_eq!(Pte::from_raw(POISON).pfn(), None);
        assert_eq!(classify_pmd(0, 16), PmdKind::None);
        assert_eq!(classify_pmd(table_entry(0), 16), PmdKind::Bad);
        assert_eq!(classify_pmd(huge_entry(3), 4096), PmdKind::Bad);
    }
}
