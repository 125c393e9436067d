//! Case 1 (`Detached`): allocate a fresh table, fill it through the owner's writable map
//! (no lock needed), read it through its `Detached` reference, then publish it with
//! `pmd_populate` under the PMD lock and the mmap lock (which allows installing).

use typed_pgtable::mmu::{Mmu, MmuConfig, Pte};
use typed_pgtable::provenance::{DetachedPmd, pmd_lock, pte_offset_map};

const VA: u64 = 0x60_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let data = mmu.alloc_data_frame().unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_alloc(VA).unwrap();
    let mut table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    table
        .pte_offset_map_mut(VA)
        .set_pte(VA, Pte::page(data.pfn()))
        .unwrap();
    {
        let owned = pte_offset_map(&table.pmd(), VA).expect("an owned table");
        assert_eq!(owned.pte().pfn(), Some(data.pfn()));
    }
    let pml = pmd_lock(&pmd);
    table.pmd_populate(&mm, &pml).map_err(|r| r.error).unwrap();
    drop(pml);
    drop(mm);
    assert_eq!(mmu.translate(VA).unwrap(), Some(data.pfn() << 12));
    assert_eq!(mmu.audit().violations(), 0);
}
