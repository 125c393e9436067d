//! `pmdp_collapse_flush` given an `Unverified` PTE lock (an `rw_nolock` lock not revalidated).
//!
//! Clearing the slot needs the PTE lock of the table the slot names *now*; an unverified lock
//! may belong to a table that was already replaced. Only `PteLocked<_, _, Attached>` is
//! accepted, so the unverified lock is a mismatched type.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pmd_lock, pmdp_collapse_flush, pte_offset_map_rw_nolock};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pml = pmd_lock(&pmd);
    let ptl = pte_offset_map_rw_nolock(&pmd, VA).unwrap().lock();
    let _table = pmdp_collapse_flush(&pml, ptl);
}
