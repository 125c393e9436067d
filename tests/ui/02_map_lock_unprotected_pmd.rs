//! `pte_offset_map_lock` on a pmd whose proof was dropped with `forget_protection()`.
//!
//! Taking the PTE lock needs the table (and its lock) to stay alive, which only a proof
//! guarantees; an `Unprotected` pmd has none, so the custom `ProvesProtection` diagnostic must
//! fire here as it does for `pte_offset_map`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_lock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let raw = pmd.forget_protection();
    let _pte = pte_offset_map_lock(&raw, VA);
}
