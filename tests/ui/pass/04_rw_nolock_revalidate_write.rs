//! `pte_offset_map_rw_nolock`: map without the lock, lock later (`Unverified`), `revalidate`
//! against the live slot, and write through the `Attached` lock it returns.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pte_offset_map_ro_nolock, pte_offset_map_rw_nolock};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let pfn = mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().expect("upper levels exist");
    let unverified = pte_offset_map_rw_nolock(&pmd, VA)
        .expect("a PTE table")
        .lock();
    assert_eq!(unverified.pte().pfn(), Some(pfn)); // reads are fine before revalidating
    let attached = unverified.revalidate(&pmd).map_err(|r| r.error).unwrap();
    let old = attached.ptep_get_and_clear(VA);
    assert_eq!(old.pfn(), Some(pfn));
    drop(attached);
    let ro = pte_offset_map_ro_nolock(&pmd, VA)
        .expect("a PTE table")
        .lock();
    assert!(ro.pte().is_none());
    drop(ro);
    drop(mm);
    assert_eq!(mmu.audit().violations(), 0);
}
