//! Soundness class 1: `detach_range` while an `Attached` lock from the same mmap write guard's
//! own walk is still held.
//!
//! The exclusive token clears slots without the PTE lock, so no `Attached` lock of the guard
//! may outlive its creation: `detach_range` borrows the guard mutably, and the walk's lock
//! borrows it shared.

use typed_pgtable::mmu::{Mmu, MmuConfig, VmaKind};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.mmap(VA, 0x20_0000, VmaKind::Anon).unwrap();
    mmu.map_page(VA).unwrap();
    let mut mm = mmu.mmap_write_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let ptl = pte_offset_map_lock(&pmd, VA).unwrap();
    let excl = mm.detach_range(VA, 0x20_0000).unwrap();
    excl.free_pgtables();
    ptl.set_pte(VA, ptl.pte().mkold()).unwrap();
}
