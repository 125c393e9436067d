//! A pmd copied with `pmdp_get_lockless` inside an RCU section, mapped after `drop(guard)`.
//!
//! `CopiedUnderRcu<'g>` is a proof only while the section `'g` is open; after the guard is
//! dropped the copy may name a freed table. The copy borrows the guard, so the guard cannot
//! be dropped while the copy is still used.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{pmdp_get_lockless, pte_offset_map};

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = pmdp_get_lockless(&pmd, &guard).unwrap();
    drop(guard);
    let _map = pte_offset_map(&copy, VA);
}
