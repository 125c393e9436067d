//! Freeing a `Retired` table (from `pmdp_collapse_flush`) at once with `pte_free()`.
//!
//! Lockless walkers (GUP-fast) that read the slot before the unlink may still be inside the
//! table; freeing it before a grace period is exactly the page-table use-after-free this
//! crate exists to prevent. `pte_free` exists only for `Fresh` tables; a `Retired` one must
//! use `pte_free_defer`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_lock};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_lock(&pmd, VA).unwrap();
    let table = pmdp_collapse_flush(&pml, ptl).unwrap();
    table.pte_free();
}
