//! Case 2 (`CopiedUnderRcu<'g>`): a lockless copy inside an RCU read section, mapped while the
//! section is open, with GUP-fast's recheck `still_installed`; both the
//! `Mmu::pmd_copy_lockless` walk and `pmdp_get_lockless` on an in-table pmd.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pmdp_get_lockless, pte_offset_map};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let pfn = mmu.map_page(VA).unwrap();
    {
        let guard = mmu.rcu_read_lock();
        let copy = mmu
            .pmd_copy_lockless(&guard, VA)
            .unwrap()
            .expect("upper levels exist");
        let map = pte_offset_map(&copy, VA).expect("a PTE table");
        assert_eq!(map.pte().pfn(), Some(pfn));
        assert!(copy.still_installed());
    }
    {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(VA).unwrap().expect("upper levels exist");
        let guard = mmu.rcu_read_lock();
        let copy = pmdp_get_lockless(&pmd, &guard).unwrap();
        let map = pte_offset_map(&copy, VA).expect("a PTE table");
        assert_eq!(map.ptep_get(VA).pfn(), Some(pfn));
        assert!(copy.still_installed());
    }
    assert_eq!(mmu.audit().violations(), 0);
}
