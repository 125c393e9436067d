//! A `CopiedUnderRcu<'g>` pmd moved into another thread.
//!
//! The copy is protected by a read section of *this* thread; on another thread nothing keeps
//! a grace period from ending while it is mapped there. The copy is `!Send`, like
//! crossbeam-epoch's `Shared<'g, T>`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _map = pte_offset_map(&copy, VA);
        });
    });
}
