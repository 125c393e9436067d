//! `pte_offset_map_rw_nolock` called with a copied pmd.
//!
//! A writer that maps without the lock must later revalidate against the live slot; a copy
//! carries no slot to revalidate against in the required form. Only `InTable` is accepted, so
//! the copied pmd is a mismatched type.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_rw_nolock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    let _map = pte_offset_map_rw_nolock(&copy, VA);
}
