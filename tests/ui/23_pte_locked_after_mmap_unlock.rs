//! A `PteLocked` kept after `drop(mm)` released the mmap lock its pmd was walked under.
//!
//! The `Attached` state is proven against a slot that the mmap lock keeps stable; after the
//! unlock the slot's PMD table may be freed and the proof is void. The lock borrows the pmd,
//! which borrows the token, so the token cannot be dropped while the lock is used.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pte = pte_offset_map_lock(&pmd, VA).unwrap();
    drop(mm);
    pte.set_pte(VA, pte.pte().mkold()).unwrap();
}
