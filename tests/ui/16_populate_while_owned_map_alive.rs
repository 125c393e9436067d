//! `pmd_populate` while a map made from the table's `Detached` reference is still alive.
//!
//! The owned map relies on ownership, not on an RCU section that began before a slot read:
//! once the table is published and then retracted, nothing would keep it alive under the map.
//! The map borrows the `DetachedPmd`, so the table cannot be moved into the slot meanwhile.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{DetachedPmd, pmd_lock, pte_offset_map};

const VA: u64 = 0x60_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_alloc(VA).unwrap();
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    let map = pte_offset_map(&table.pmd(), VA).unwrap();
    let pml = pmd_lock(&pmd);
    table.pmd_populate(&mm, &pml).unwrap();
    let _ = map.pte();
}
