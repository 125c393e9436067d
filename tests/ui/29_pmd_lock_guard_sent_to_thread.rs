//! A `PmdLockGuard` moved into another thread.
//!
//! The PMD lock is a spinlock owned by the thread that took it; releasing it from another
//! thread is a lock-discipline bug. `PmdLockGuard` is `!Send`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pmd_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pml = pmd_lock(&pmd);
    std::thread::scope(|s| {
        s.spawn(move || drop(pml));
    });
}
