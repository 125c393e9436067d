//! Minting an `InTable` pmd from a bare slot with `PmdRef::from_slot` outside `unsafe`.
//!
//! `from_slot` asserts that a walk lock keeps the slot's table attached for `'a`; the types
//! cannot check that, so only `unsafe` code may make the claim (E0133).

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::PmdRef;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let slot = mm.pmd_offset(VA).unwrap().unwrap().slot();
    let _forged = PmdRef::from_slot(&mmu, slot);
}
