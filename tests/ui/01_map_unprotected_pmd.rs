//! `pte_offset_map` on a pmd built from a bare value (`PmdRef::unprotected`).
//!
//! An `Unprotected` pmd carries no proof that the PTE table it names cannot be freed while it
//! is mapped, so mapping it would be a potential page-table use-after-free. The bound
//! `P: ProvesProtection` rejects it, and the custom diagnostic names the three proofs.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{PmdRef, pte_offset_map};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let value = mm.pmd_offset(VA).unwrap().unwrap().pmd_val();
    let raw = PmdRef::unprotected(&mmu, value);
    let _map = pte_offset_map(&raw, VA);
}
