//! `pte_offset_map_unprotected` called outside an `unsafe` block.
//!
//! The escape hatch maps a pmd with no proof at all; only the caller can promise the table
//! stays alive, so the call must be marked `unsafe` (E0133), never silently allowed.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_unprotected;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let raw = mmu.pmd_read_unprotected(VA).unwrap().unwrap();
    let _map = pte_offset_map_unprotected(&raw, VA);
}
