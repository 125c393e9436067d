//! Soundness class 1: `pmd_clear_exclusive` while an `Attached` lock of the same slot, walked
//! through the exclusive token, is still held.
//!
//! `Attached` promises the table stays installed until the lock drops, and
//! `pmd_clear_exclusive` clears a slot without taking the PTE lock. The clear therefore takes
//! the token by `&mut`, while the token's own walks borrow it shared: the write through the
//! lock after the clear cannot be written.

use typed_pgtable::mmu::{Mmu, MmuConfig, Pte, VmaKind};
use typed_pgtable::provenance::{pmd_clear_exclusive, pte_offset_map_lock};

const VA: u64 = 0x20_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.mmap(VA, 0x20_0000, VmaKind::Anon).unwrap();
    mmu.map_page(VA).unwrap();
    let mut mm = mmu.mmap_write_lock();
    let mut excl = mm.detach_range(VA, 0x20_0000).unwrap();
    let pmd = excl.pmd_offset(VA).unwrap().unwrap();
    let ptl = pte_offset_map_lock(&pmd, VA).unwrap();
    let table = pmd_clear_exclusive(&mut excl, VA).unwrap();
    ptl.set_pte(VA, Pte::none()).unwrap();
    table.pte_free_defer();
}
