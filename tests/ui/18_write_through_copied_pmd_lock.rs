//! `set_pte` through `pte_offset_map_lock` on a copied pmd (state `Unverified`).
//!
//! For an in-table pmd, `pte_offset_map_lock` rechecks the live slot with `pmd_same` under the
//! lock. For a copy the recheck would compare the copy with itself and prove nothing: the
//! table may already be retracted. The lock is therefore `Unverified`, not `CanWrite`.

use typed_pgtable::mmu::{Mmu, MmuConfig, Pte};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    let pte = pte_offset_map_lock(&copy, VA).unwrap();
    pte.set_pte(VA, Pte::none()).unwrap();
}
