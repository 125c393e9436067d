//! A `PteLocked` moved into another thread.
//!
//! A spinlock (and the RCU section under it) must be released by the thread that took it;
//! unlocking on another thread would break both. `PteLocked` is `!Send`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pte = pte_offset_map_lock(&pmd, VA).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || drop(pte));
    });
}
