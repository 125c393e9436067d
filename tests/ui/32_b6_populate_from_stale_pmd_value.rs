//! Bugs B6 and B11: populating a pmd slot from a pmd *value* (`pmd_populate(mm, new_pmd,
//! pmd_pgtable(pmd))` with `pmd` read before the locks, or none).
//!
//! `move_normal_pmd` read the old pmd before taking the rmap locks and populated the new slot
//! from it after a concurrent `retract_page_tables` had freed the table (B6); the failure path
//! of `collapse_huge_page` re-installed a none value that PT_RECLAIM had left (B11). Here a
//! value proves nothing: only a `DetachedPmd` can be populated, and the one way to make one
//! from a value is the `unsafe` `DetachedPmd::from_pmd`, whose contract (the caller owns the
//! table) is exactly what a stale read does not give. Without `unsafe` it does not compile.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::{DetachedPmd, Retired, pmd_lock};

const OLD: u64 = 0x20_0000;
const NEW: u64 = 0x40_0000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(OLD).unwrap();
    // Read before the locks: by the time they are taken, the table may be gone.
    let stale = mmu.pmd_read_unprotected(OLD).unwrap().unwrap().pmd_val();
    let mm = mmu.mmap_write_lock();
    let new = mm.pmd_alloc(NEW).unwrap();
    let pml = pmd_lock(&new);
    let table = DetachedPmd::<_, Retired>::from_pmd(&mmu, stale).unwrap();
    let _ = table.pmd_populate(&mm, &pml);
}
