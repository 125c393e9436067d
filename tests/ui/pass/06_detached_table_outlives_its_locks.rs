//! Soundness class 6: an owned table outlives the locks it was detached under.
//!
//! The kernel detaches a table under the walk, PMD and PTE locks, drops them, then frees it.
//! `PmdRef` carries the backend's lifetime apart from the walk lock's, so the `DetachedPmd`
//! that `pmdp_collapse_flush` returns is tied to the MMU only, and a helper can return it.

use typed_pgtable::mmu::check::page_table_check_pte_clear_range;
use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{
    DetachedPmd, Retired, pmd_lock, pmdp_collapse_flush, pte_offset_map, pte_offset_map_lock,
};

fn retract(mmu: &Mmu, va: u64) -> Option<DetachedPmd<'_, Mmu, Retired>> {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(va).ok()??;
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_lock(&pmd, va).ok()?;
    pmdp_collapse_flush(&pml, ptl).ok()
}

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let pfn = mmu.map_page(0x20_1000).unwrap();
    let table = retract(&mmu, 0x20_1000).expect("a table to retract");
    // The locks are gone; the owner still reads its table, through a map tied to the owner.
    assert_eq!(
        pte_offset_map(&table.pmd(), 0x20_1000).unwrap().pte().pfn(),
        Some(pfn)
    );
    assert_eq!(mmu.translate(0x20_1000).unwrap(), None);
    page_table_check_pte_clear_range(&mmu, 0x20_1000, &table.pmd());
    table.pte_free_defer();
    mmu.rcu_barrier();
    assert_eq!(mmu.audit().violations(), 0);
}
