//! `pte_offset_map_ro_nolock` called with a copied pmd.
//!
//! The `nolock` family hands back the table's lock for a later recheck against the slot, so it
//! needs the slot itself (`InTable`), not a value copied out of it. A
//! `PmdRef<_, _, CopiedUnderRcu<'_>>` is a mismatched type.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_ro_nolock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    let _map = pte_offset_map_ro_nolock(&copy, VA);
}
