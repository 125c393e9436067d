//! `revalidate` of an `Unverified` lock against a copied pmd.
//!
//! Revalidation is `pmd_same` between the mapped value and the *live slot*; comparing against
//! a copy proves nothing about the slot now. `revalidate` takes only an `InTable` pmd, so the
//! copy is a mismatched type.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    let pte = pte_offset_map_lock(&copy, VA).unwrap();
    let _attached = pte.revalidate(&copy);
}
