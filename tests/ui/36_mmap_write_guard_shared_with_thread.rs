//! Soundness class 2: the mmap write guard shared with another thread.
//!
//! The write lock belongs to the thread that took it; another thread walking under it would
//! be a walker the holder's exclusion does not know about. The guard is `!Sync`.

use typed_pgtable::mmu::{Mmu, MmuConfig};

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(0x1000).unwrap();
    let mm = mmu.mmap_write_lock();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = mm.pmd_offset(0x1000);
        });
    });
}
