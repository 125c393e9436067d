//! The arm64 descriptor format: VMSAv8-64 stage 1, 4 KiB granule.
//!
//! # The format
//!
//! Every level of the tree is a 4 KiB table of 512 little-endian 64-bit descriptors. Levels 0
//! to 3 translate virtual address bits \[47:39\], \[38:30\], \[29:21\] and \[20:12\]; the kernel calls
//! them pgd, pud, pmd and pte. What a descriptor means depends on its two low bits and on its
//! level:
//!
//! | bits\[1:0\] | levels 0-2 | level 3 |
//! |---|---|---|
//! | `x0` | invalid: the hardware ignores the other 63 bits (software may keep a swap or migration entry there) | invalid |
//! | `01` | a **block** (levels 1 and 2 only; 1 GiB or 2 MiB); reserved at level 0 | reserved |
//! | `11` | a **table**: the output address names the next-level table | a **page** (4 KiB) |
//!
//! The fields a valid descriptor carries:
//!
//! | bits | field | here |
//! |---|---|---|
//! | 4:2 | AttrIndx, an index into `MAIR_EL1` | [`Prot::attr_indx`] |
//! | 7:6 | AP\[2:1\]: bit 7 read-only, bit 6 accessible from EL0 | [`AP_RDONLY`], [`AP_USER`] |
//! | 9:8 | SH, shareability (`0b11` inner) | [`SH_INNER`] |
//! | 10 | AF, the access flag (a clear AF faults on first access, the arm64 "young" bit) | [`AF`] |
//! | 11 | nG, not global (the TLB entry is tagged with the ASID) | [`NG`] |
//! | 47:12 | the output address (4 KiB aligned; a block's low bits are zero: 20:12 for 2 MiB) | [`OA_MASK`] |
//! | 53 | PXN, never executable at EL1 | [`PXN`] |
//! | 54 | UXN (XN), never executable at EL0 | [`UXN`] |
//! | 58:55 | ignored by the hardware: reserved for software | [`SW_MASK`] |
//!
//! Table descriptors carry only the output address and the type here (their own attribute
//! bits, APTable and friends in 63:59, stay zero).
//!
//! # This module
//!
//! Pure encoding: `u64` in, `u64` out, no memory and no atomics, so that it can be tested
//! exhaustively and shared with other users of the format. [`Pte`] and [`Pmd`] are the
//! `pte_t` and `pmd_t` of the format; the free functions carry the kernel's names
//! (`pfn_pte`, `pte_valid`, `pmd_sect`, ...). [`decode`] classifies a descriptor at any level.

use core::fmt;

/// Bit 0: the descriptor is valid.
pub const DESC_VALID: u64 = 1 << 0;
/// Bits\[1:0\]: the type field.
pub const DESC_TYPE_MASK: u64 = 0b11;
/// Type of a table descriptor (levels 0-2).
pub const DESC_TABLE: u64 = 0b11;
/// Type of a block descriptor (levels 1-2).
pub const DESC_BLOCK: u64 = 0b01;
/// Type of a page descriptor (level 3).
pub const DESC_PAGE: u64 = 0b11;

/// Shift of AttrIndx, bits 4:2.
pub const ATTR_INDX_SHIFT: u32 = 2;
/// AttrIndx, bits 4:2.
pub const ATTR_INDX_MASK: u64 = 0b111 << ATTR_INDX_SHIFT;
/// AP\[1\], bit 6: accessible from EL0.
pub const AP_USER: u64 = 1 << 6;
/// AP\[2\], bit 7: read-only.
pub const AP_RDONLY: u64 = 1 << 7;
/// SH, bits 9:8.
pub const SH_MASK: u64 = 0b11 << 8;
/// SH = `0b11`: inner shareable.
pub const SH_INNER: u64 = 0b11 << 8;
/// AF, bit 10: the access flag.
pub const AF: u64 = 1 << 10;
/// nG, bit 11: not global.
pub const NG: u64 = 1 << 11;
/// The output address, bits 47:12.
pub const OA_MASK: u64 = ((1 << 48) - 1) & !((1 << PAGE_SHIFT) - 1);
/// PXN, bit 53.
pub const PXN: u64 = 1 << 53;
/// UXN (XN at EL0), bit 54.
pub const UXN: u64 = 1 << 54;
/// Shift of the software bits, 58:55.
pub const SW_SHIFT: u32 = 55;
/// The software bits, 58:55.
pub const SW_MASK: u64 = 0b1111 << SW_SHIFT;

/// Every attribute bit of a block or page descriptor that [`Prot`] may carry.
pub const PROT_MASK: u64 =
    ATTR_INDX_MASK | AP_USER | AP_RDONLY | SH_MASK | AF | NG | PXN | UXN | SW_MASK;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// log2 of the span of one pmd (a 2 MiB block).
pub const PMD_SHIFT: u32 = 21;
/// log2 of the span of one pud (a 1 GiB block).
pub const PUD_SHIFT: u32 = 30;
/// Descriptors per table, at every level.
pub const PTRS_PER_TABLE: usize = 512;

/// The largest page frame number the output address can hold (36 bits).
pub const MAX_PFN: u64 = OA_MASK >> PAGE_SHIFT;

/// The attribute bits of a block or page descriptor (`pgprot_t`): everything but the type and
/// the output address.
///
/// # Invariants
/// Only bits of [`PROT_MASK`] are set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u64);

impl Prot {
    /// Normal memory (AttrIndx 0), inner shareable, accessed, read-write at EL1, never
    /// executable: the usual kernel data mapping.
    pub const KERNEL: Prot = Prot(SH_INNER | AF | PXN | UXN);
    /// As [`KERNEL`](Self::KERNEL) but read-only.
    pub const KERNEL_RO: Prot = Prot(SH_INNER | AF | PXN | UXN | AP_RDONLY);
    /// A user data page: accessible from EL0, not global, never executable.
    pub const USER: Prot = Prot(SH_INNER | AF | NG | AP_USER | PXN | UXN);

    /// The attribute bits of `bits`; every bit outside [`PROT_MASK`] is dropped.
    pub const fn from_bits_truncate(bits: u64) -> Prot {
        // INVARIANT: masked.
        Prot(bits & PROT_MASK)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The AttrIndx field.
    pub const fn attr_indx(self) -> u8 {
        ((self.0 & ATTR_INDX_MASK) >> ATTR_INDX_SHIFT) as u8
    }

    /// The same attributes with AttrIndx `index` (taken modulo 8).
    pub const fn with_attr_indx(self, index: u8) -> Prot {
        Prot((self.0 & !ATTR_INDX_MASK) | (((index & 0b111) as u64) << ATTR_INDX_SHIFT))
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prot({:#x})", self.0)
    }
}

/// A level-3 descriptor (`pte_t`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(u64);

/// A level-2 descriptor (`pmd_t`), as bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pmd(u64);

macro_rules! raw_bits {
    ($t:ident, $name:literal) => {
        impl $t {
            /// The empty descriptor.
            pub const NONE: $t = $t(0);

            /// A descriptor from raw bits (any value: invalid and reserved ones included).
            pub const fn from_bits(bits: u64) -> $t {
                $t(bits)
            }

            /// The raw bits.
            pub const fn bits(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({:#018x})"), self.0)
            }
        }
    };
}
raw_bits!(Pte, "Pte");
raw_bits!(Pmd, "Pmd");

/// What a descriptor is, from its type bits and its level (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescKind {
    /// Bit 0 clear. Zero is the empty entry; other values are software's (swap, migration).
    Invalid,
    /// Levels 0-2: the physical address of the next-level table.
    Table(u64),
    /// Levels 1-2: a block mapping the naturally aligned range at this output address.
    Block(u64),
    /// Level 3: a page at this output address.
    Page(u64),
    /// A type that the level does not allow (a block at level 0, `0b01` at level 3), or a
    /// level above 3.
    Reserved,
}

/// Classifies `desc` as a descriptor of translation level `level` (0 to 3).
pub const fn decode(desc: u64, level: u8) -> DescKind {
    if desc & DESC_VALID == 0 {
        return DescKind::Invalid;
    }
    let oa = desc & OA_MASK;
    match (level, desc & DESC_TYPE_MASK) {
        (0..=2, DESC_TABLE) => DescKind::Table(oa),
        (1 | 2, DESC_BLOCK) => DescKind::Block(oa),
        (3, DESC_PAGE) => DescKind::Page(oa),
        _ => DescKind::Reserved,
    }
}

/// A table descriptor naming the next-level table at physical address `pa` (levels 0-2), or
/// `None` if `pa` is not 4 KiB aligned or does not fit in bits 47:12.
pub const fn mk_table_desc(pa: u64) -> Option<u64> {
    if pa & !OA_MASK != 0 {
        None
    } else {
        Some(pa | DESC_TABLE)
    }
}

/// Whether `pa` can be the output address of a table or page descriptor.
pub const fn oa_fits(pa: u64) -> bool {
    pa & !OA_MASK == 0
}

// ---- level 3: pte_t ----

/// A page descriptor mapping page frame `pfn` with `prot` (`pfn_pte`). The pfn is truncated to
/// the 36 bits of the output address, as the kernel's macro does; see [`MAX_PFN`].
pub const fn pfn_pte(pfn: u64, prot: Prot) -> Pte {
    Pte(((pfn << PAGE_SHIFT) & OA_MASK) | prot.0 | DESC_PAGE)
}

/// The page frame a page descriptor maps (`pte_pfn`); meaningful only if [`pte_valid`].
pub const fn pte_pfn(pte: Pte) -> u64 {
    (pte.0 & OA_MASK) >> PAGE_SHIFT
}

/// The attribute bits of a descriptor.
pub const fn pte_pgprot(pte: Pte) -> Prot {
    Prot::from_bits_truncate(pte.0)
}

/// The entry is empty (`pte_none`).
pub const fn pte_none(pte: Pte) -> bool {
    pte.0 == 0
}

/// Bit 0 is set (`pte_valid`): the hardware walks it.
pub const fn pte_valid(pte: Pte) -> bool {
    pte.0 & DESC_VALID != 0
}

/// A valid level-3 descriptor of page type (`pte_valid` plus the type check `pte_table`
/// performs on arm64).
pub const fn pte_is_page(pte: Pte) -> bool {
    pte.0 & DESC_TYPE_MASK == DESC_PAGE
}

/// The access flag is set (`pte_young`).
pub const fn pte_young(pte: Pte) -> bool {
    pte.0 & AF != 0
}

/// Sets the access flag (`pte_mkyoung`).
pub const fn pte_mkyoung(pte: Pte) -> Pte {
    Pte(pte.0 | AF)
}

/// Clears the access flag (`pte_mkold`).
pub const fn pte_mkold(pte: Pte) -> Pte {
    Pte(pte.0 & !AF)
}

/// Writable: AP\[2\] clear (`pte_write`, without the DBM subtleties).
pub const fn pte_write(pte: Pte) -> bool {
    pte.0 & AP_RDONLY == 0
}

/// Makes the entry writable (`pte_mkwrite`).
pub const fn pte_mkwrite(pte: Pte) -> Pte {
    Pte(pte.0 & !AP_RDONLY)
}

/// Makes the entry read-only (`pte_wrprotect`).
pub const fn pte_wrprotect(pte: Pte) -> Pte {
    Pte(pte.0 | AP_RDONLY)
}

/// Accessible from EL0 (`pte_user`).
pub const fn pte_user(pte: Pte) -> bool {
    pte.0 & AP_USER != 0
}

/// Executable at EL0 (`pte_user_exec`): UXN clear.
pub const fn pte_user_exec(pte: Pte) -> bool {
    pte.0 & UXN == 0
}

/// The four software bits, 58:55.
pub const fn pte_sw_bits(pte: Pte) -> u8 {
    ((pte.0 & SW_MASK) >> SW_SHIFT) as u8
}

/// The entry with software bits `sw` (taken modulo 16).
pub const fn pte_set_sw_bits(pte: Pte, sw: u8) -> Pte {
    Pte((pte.0 & !SW_MASK) | (((sw & 0xf) as u64) << SW_SHIFT))
}

// ---- level 2: pmd_t ----

/// The entry is empty (`pmd_none`).
pub const fn pmd_none(pmd: Pmd) -> bool {
    pmd.0 == 0
}

/// Bit 0 is set (`pmd_present` without the PROT_NONE case).
pub const fn pmd_valid(pmd: Pmd) -> bool {
    pmd.0 & DESC_VALID != 0
}

/// A table descriptor (`pmd_table`).
pub const fn pmd_table(pmd: Pmd) -> bool {
    pmd.0 & DESC_TYPE_MASK == DESC_TABLE
}

/// A block ("section") descriptor (`pmd_sect`).
pub const fn pmd_sect(pmd: Pmd) -> bool {
    pmd.0 & DESC_TYPE_MASK == DESC_BLOCK
}

/// A descriptor naming the PTE table at physical address `pa` (what `__pmd_populate` stores),
/// or `None` if `pa` is not a 4 KiB aligned address of at most 48 bits.
pub const fn pmd_mktable(pa: u64) -> Option<Pmd> {
    match mk_table_desc(pa) {
        Some(d) => Some(Pmd(d)),
        None => None,
    }
}

/// The physical address of the PTE table a table descriptor names (`pmd_page_paddr`).
pub const fn pmd_page_paddr(pmd: Pmd) -> u64 {
    pmd.0 & OA_MASK
}

/// The output-address bits of a 2 MiB block: 47:21.
pub const PMD_BLOCK_OA_MASK: u64 = OA_MASK & !((1 << PMD_SHIFT) - 1);

/// A 2 MiB block descriptor for the block that starts at page frame `pfn` (`pfn_pmd` plus
/// `pmd_mkhuge`), or `None` if `pfn` is not 2 MiB aligned or is above [`MAX_PFN`].
pub const fn pfn_pmd(pfn: u64, prot: Prot) -> Option<Pmd> {
    let pa = pfn << PAGE_SHIFT;
    if pfn > MAX_PFN || pa & !PMD_BLOCK_OA_MASK != 0 {
        None
    } else {
        Some(Pmd(pa | prot.0 | DESC_BLOCK))
    }
}

/// The first page frame of a block descriptor (`pmd_pfn`).
pub const fn pmd_pfn(pmd: Pmd) -> u64 {
    (pmd.0 & PMD_BLOCK_OA_MASK) >> PAGE_SHIFT
}

/// The attribute bits of a block descriptor.
pub const fn pmd_pgprot(pmd: Pmd) -> Prot {
    Prot::from_bits_truncate(pmd.0)
}

/// Index of `addr`'s descriptor in its PTE table (`pte_index`).
pub const fn pte_index(addr: u64) -> usize {
    ((addr >> PAGE_SHIFT) as usize) & (PTRS_PER_TABLE - 1)
}

/// Index of `addr`'s descriptor in its PMD table (`pmd_index`).
pub const fn pmd_index(addr: u64) -> usize {
    ((addr >> PMD_SHIFT) as usize) & (PTRS_PER_TABLE - 1)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn field_positions_follow_the_architecture() {
        assert_eq!(ATTR_INDX_MASK, 0b1_1100);
        assert_eq!(AP_USER | AP_RDONLY, 0b1100_0000);
        assert_eq!(SH_MASK, 0b11_0000_0000);
        assert_eq!(AF, 0x400);
        assert_eq!(NG, 0x800);
        assert_eq!(OA_MASK, 0x0000_ffff_ffff_f000);
        assert_eq!(PXN, 1 << 53);
        assert_eq!(UXN, 1 << 54);
        assert_eq!(SW_MASK, 0x0780_0000_0000_0000);
        assert_eq!(MAX_PFN, (1 << 36) - 1);
        // The fields do not overlap each other, the type or the output address.
        let fields = [
            DESC_TYPE_MASK,
            ATTR_INDX_MASK,
            AP_USER,
            AP_RDONLY,
            SH_MASK,
            AF,
            NG,
            OA_MASK,
            PXN,
            UXN,
            SW_MASK,
        ];
        for (i, a) in fields.iter().enumerate() {
            for b in &fields[i + 1..] {
                assert_eq!(a & b, 0, "{a:#x} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn decode_depends_on_the_level() {
        let table = pmd_mktable(0x1234_5000).unwrap().bits();
        assert_eq!(decode(table, 0), DescKind::Table(0x1234_5000));
        assert_eq!(decode(table, 2), DescKind::Table(0x1234_5000));
        assert_eq!(decode(table, 3), DescKind::Page(0x1234_5000));
        let block = pfn_pmd(0x400, Prot::KERNEL).unwrap().bits();
        assert_eq!(decode(block, 2), DescKind::Block(0x40_0000));
        assert_eq!(decode(block, 1), DescKind::Block(0x40_0000));
        assert_eq!(decode(block, 0), DescKind::Reserved);
        assert_eq!(decode(block, 3), DescKind::Reserved);
        assert_eq!(decode(table, 4), DescKind::Reserved);
        assert_eq!(decode(0, 2), DescKind::Invalid);
        assert_eq!(
            decode(0xdead_0000, 3),
            DescKind::Invalid,
            "bit 0 clear: software's"
        );
    }

    #[test]
    fn pte_helpers() {
        let pte = pfn_pte(0x42, Prot::USER);
        assert!(pte_valid(pte) && pte_is_page(pte) && !pte_none(pte));
        assert_eq!(pte_pfn(pte), 0x42);
        assert_eq!(pte_pgprot(pte), Prot::USER);
        assert!(pte_young(pte) && pte_user(pte) && pte_write(pte) && !pte_user_exec(pte));
        assert!(!pte_young(pte_mkold(pte)));
        assert_eq!(pte_mkyoung(pte_mkold(pte)), pte);
        assert!(!pte_write(pte_wrprotect(pte)));
        assert_eq!(pte_mkwrite(pte_wrprotect(pte)), pte);
        let sw = pte_set_sw_bits(pte, 0b1010);
        assert_eq!(pte_sw_bits(sw), 0b1010);
        assert_eq!(pte_pfn(sw), 0x42);
        assert!(pte_none(Pte::NONE) && !pte_valid(Pte::NONE));
        assert_eq!(
            pte_pfn(pfn_pte(MAX_PFN + 1, Prot::KERNEL)),
            0,
            "truncated like the macro"
        );
        assert_eq!(Prot::KERNEL.with_attr_indx(5).attr_indx(), 5);
        assert_eq!(std::format!("{pte:?}"), "Pte(0x0060000000042f43)");
    }

    #[test]
    fn pmd_helpers() {
        let t = pmd_mktable(0x7000).unwrap();
        assert!(pmd_valid(t) && pmd_table(t) && !pmd_sect(t) && !pmd_none(t));
        assert_eq!(pmd_page_paddr(t), 0x7000);
        assert_eq!(pmd_mktable(0x7001), None, "unaligned");
        assert_eq!(pmd_mktable(1 << 48), None, "above 48 bits");
        let b = pfn_pmd(0x200, Prot::KERNEL_RO).unwrap();
        assert!(pmd_valid(b) && pmd_sect(b) && !pmd_table(b));
        assert_eq!(pmd_pfn(b), 0x200);
        assert_eq!(pmd_pgprot(b), Prot::KERNEL_RO);
        assert_eq!(pfn_pmd(0x201, Prot::KERNEL), None, "not 2 MiB aligned");
        assert_eq!(pfn_pmd(MAX_PFN + 1, Prot::KERNEL), None);
        assert!(pmd_none(Pmd::NONE));
        assert_eq!(pte_index(0x3f_f000), 511);
        assert_eq!(pmd_index(0x3fe0_0000), 511);
        assert_eq!(pmd_index(1 << 30), 0);
    }

    proptest::proptest! {
        #[test]
        fn pte_round_trip(pfn in 0..=MAX_PFN, prot in proptest::num::u64::ANY, sw in 0u8..16) {
            let prot = Prot::from_bits_truncate(prot);
            let pte = pte_set_sw_bits(pfn_pte(pfn, prot), sw);
            proptest::prop_assert!(pte_valid(pte) && pte_is_page(pte));
            proptest::prop_assert_eq!(pte_pfn(pte), pfn);
            proptest::prop_assert_eq!(pte_sw_bits(pte), sw);
            proptest::prop_assert_eq!(pte_pgprot(pte).bits() & !SW_MASK, prot.bits() & !SW_MASK);
            proptest::prop_assert_eq!(decode(pte.bits(), 3), DescKind::Page(pfn << PAGE_SHIFT));
            proptest::prop_assert_eq!(pte_mkyoung(pte_mkold(pte)), pte_mkyoung(pte));
            proptest::prop_assert_eq!(Pte::from_bits(pte.bits()), pte);
        }

        #[test]
        fn pmd_round_trip(block in 0..=(MAX_PFN >> 9), page in 0..=MAX_PFN, prot in proptest::num::u64::ANY) {
            let prot = Prot::from_bits_truncate(prot);
            let pfn = block << 9;
            let b = pfn_pmd(pfn, prot).unwrap();
            proptest::prop_assert_eq!(pmd_pfn(b), pfn);
            proptest::prop_assert_eq!(pmd_pgprot(b), prot);
            proptest::prop_assert_eq!(decode(b.bits(), 2), DescKind::Block(pfn << PAGE_SHIFT));
            let pa = page << PAGE_SHIFT;
            let t = pmd_mktable(pa).unwrap();
            proptest::prop_assert_eq!(pmd_page_paddr(t), pa);
            proptest::prop_assert_eq!(decode(t.bits(), 2), DescKind::Table(pa));
        }

        #[test]
        fn decode_never_panics_and_invalid_means_bit0(desc in proptest::num::u64::ANY, level in 0u8..5) {
            let kind = decode(desc, level);
            proptest::prop_assert_eq!(kind == DescKind::Invalid, desc & 1 == 0);
        }
    }
}
