//! Depositing a `Retired` table on a huge pmd (`pgtable_trans_huge_deposit`).
//!
//! A deposited table is later withdrawn as `Fresh` and may then be freed at once; depositing a
//! table lockless walkers may still be reading would launder `Retired` into `Fresh`. Only
//! `Fresh` tables have `pgtable_trans_huge_deposit`.

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
    let _ = table.pgtable_trans_huge_deposit(&pml);
}
