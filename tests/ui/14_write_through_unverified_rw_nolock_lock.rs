//! `ptep_get_and_clear` through a `pte_offset_map_rw_nolock` lock before `revalidate`.
//!
//! The kernel contract of `rw_nolock` is "recheck `pmd_same` under the lock before writing".
//! Until `revalidate(&pmd)` has done so, the lock is `Unverified`, which is not `CanWrite`.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map_rw_nolock;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let pte = pte_offset_map_rw_nolock(&pmd, VA).unwrap().lock();
    let _old = pte.ptep_get_and_clear(VA);
}
