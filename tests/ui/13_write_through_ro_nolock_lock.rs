//! `set_pte` through the lock of a `pte_offset_map_ro_nolock` map (state `ReadOnly`).
//!
//! The lock taken on a `ro_nolock` map gives exclusion against writers, but nothing proves the
//! table is still in the slot (it may have been retracted between the map and the lock), so a
//! write could land in a detached table. `ReadOnly` does not implement `CanWrite`.

use typed_pgtable::mmu::{Mmu, MmuConfig, Pte};
use typed_pgtable::provenance::pte_offset_map_ro_nolock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pte = pte_offset_map_ro_nolock(&pmd, VA).unwrap().lock();
    pte.set_pte(VA, Pte::none()).unwrap();
}
