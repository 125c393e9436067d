//! Soundness class 3 (rule I7): installing a PTE table from a context that holds only the rmap
//! lock.
//!
//! The rmap lock lets khugepaged walk and retract; it does not exclude `free_pgtables` of a
//! VMA that is being unmapped, which relies on nobody installing behind it. `pmd_populate`
//! takes the lock that allows the install, bounded by `InstallLock`, which the rmap guard does
//! not implement.

use typed_pgtable::mmu::{Mmu, MmuConfig, VmaKind};
use typed_pgtable::provenance::{DetachedPmd, pmd_lock};

const VA: u64 = 0x20_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.mmap(VA, 0x20_0000, VmaKind::File).unwrap();
    mmu.map_page(VA + 0x20_0000).unwrap();
    let rmap = mmu.i_mmap_lock_read();
    let pmd = rmap.pmd_offset(VA).unwrap().unwrap();
    let pml = pmd_lock(&pmd);
    let table = DetachedPmd::pte_alloc_one(&mmu).unwrap();
    let _ = table.pmd_populate(&rmap, &pml);
}
