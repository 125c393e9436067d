//! A `PteMap` made from a lockless copy, kept after the RCU read section of the copy ended.
//!
//! The copy is protected only while the section it was read in is open: once the guard is
//! gone a grace period can end and the table can be freed under the map. The map borrows the
//! guard (through the copy), so it cannot leave the guard's scope.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let map = {
        let guard = mmu.rcu_read_lock();
        let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        pte_offset_map(&copy, VA).unwrap()
    };
    let _ = map.pte();
}
