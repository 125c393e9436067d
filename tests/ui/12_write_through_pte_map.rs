//! `set_pte` through the read-only `PteMap` that `pte_offset_map` returns.
//!
//! A lockless map proves the table's memory stays valid, not that it is still installed or
//! that nobody else writes it: writes need the PTE lock. `PteMap` has no write methods.

use typed_pgtable::mmu::{Mmu, MmuConfig, Pte};
use typed_pgtable::provenance::pte_offset_map;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let map = pte_offset_map(&pmd, VA).unwrap();
    map.set_pte(VA, Pte::none());
}
