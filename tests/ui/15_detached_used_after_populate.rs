//! A `DetachedPmd` used after `pmd_populate` consumed it.
//!
//! Once populated the table belongs to the slot: khugepaged may retract and free it at any
//! time, so a `Detached` reference to it would be a stale ownership claim. `pmd_populate`
//! takes `self` by value; the later `table.pmd()` is a use of a moved value.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{DetachedPmd, pmd_lock, pte_offset_map};

const VA: u64 = 0x60_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_alloc(VA).unwrap();
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    let pml = pmd_lock(&pmd);
    table.pmd_populate(&mm, &pml).unwrap();
    drop(pml);
    let _map = pte_offset_map(&table.pmd(), VA);
}
