//! A lock revalidated against an in-table pmd is `Attached` only while the walk lock that keeps
//! the slot's table alive is held: the `Attached` lock must not outlive the mmap lock guard.
use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_lock;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(0x1000).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, 0x1000).unwrap().unwrap();
    let unverified = pte_offset_map_lock(&copy, 0x1000).unwrap();
    let attached = {
        let mm = mmu.mmap_read_lock();
        let pmd = mm.pmd_offset(0x1000).unwrap().unwrap();
        unverified.revalidate(&pmd).map_err(|r| r.error).unwrap()
    };
    attached.set_pte(0x1000, attached.pte().mkold()).unwrap();
}
