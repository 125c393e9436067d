//! Retraction: take the PMD lock and the `Attached` PTE lock, `pmdp_collapse_flush` the table
//! out as `Retired`, read it as its owner, and free it with `pte_free_defer` (after a grace
//! period). A `Fresh` table, by contrast, may be freed at once with `pte_free`.

use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{
    DetachedPmd, pmd_lock, pmdp_collapse_flush, pte_offset_map, pte_offset_map_lock,
};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let pfn = mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().expect("upper levels exist");
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_lock(&pmd, VA).expect("a PTE table");
    let table = pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error).unwrap();
    drop(pml);
    let owned = pte_offset_map(&table.pmd(), VA).expect("an owned table");
    assert_eq!(owned.pte().pfn(), Some(pfn));
    drop(owned);
    page_table_check_pte_clear_range(&mmu, VA, &table.pmd());
    table.pte_free_defer();
    DetachedPmd::pte_alloc_one(&mmu).unwrap().pte_free();
    drop(mm);
    assert_eq!(mmu.translate(VA).unwrap(), None);
    mmu.rcu_barrier();
    assert_eq!(mmu.audit().violations(), 0);
}
