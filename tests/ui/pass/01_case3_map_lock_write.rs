//! Case 3 (`InTable`): walk under the mmap lock, `pte_offset_map_lock`, write through the
//! `Attached` lock, and read the result back through a lockless map.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pte_offset_map, pte_offset_map_lock, pte_unmap_unlock};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let pfn = mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().expect("upper levels exist");
    let pte = pte_offset_map_lock(&pmd, VA).expect("a PTE table");
    pte.set_pte(VA, pte.pte().mkold()).unwrap();
    pte_unmap_unlock(pte);
    let map = pte_offset_map(&pmd, VA).expect("a PTE table");
    assert!(!map.pte().is_young());
    assert_eq!(map.pte().pfn(), Some(pfn));
    drop(map);
    drop(mm);
    assert_eq!(mmu.audit().violations(), 0);
}
