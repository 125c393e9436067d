//! A `PteMap` moved into another thread.
//!
//! A map holds an RCU read section (and, in a kernel, a kmap) that belongs to the thread that
//! opened it; ending it on another thread would break the section. `PteMap` is `!Send`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let map = pte_offset_map(&pmd, VA).unwrap();
    std::thread::spawn(move || {
        let _ = map.pte();
    });
}
