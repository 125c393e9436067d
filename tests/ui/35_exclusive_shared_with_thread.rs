//! Soundness class 2: the exclusive token shared with another thread.
//!
//! Its contract is that only the holder walks the slots it covers; a scoped thread walking and
//! locking through `&Exclusive` while the holder clears slots would break it. The token is
//! `!Sync`, and the error names why.

use typed_pgtable::mmu::{Mmu, MmuConfig, VmaKind};

const VA: u64 = 0x20_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.mmap(VA, 0x20_0000, VmaKind::Anon).unwrap();
    let mut mm = mmu.mmap_write_lock();
    let excl = mm.detach_range(VA, 0x20_0000).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = excl.pmd_offset(VA);
        });
    });
}
