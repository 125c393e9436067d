//! An `InTable` pmd reference kept after the mmap lock that made it was released.
//!
//! `InTable` means "a slot in a PMD table kept stable by a walk lock". Without the lock the
//! PMD table itself may go away, so the reference borrows the lock token and cannot leave
//! the block in which the token lives.

use typed_pgtable::mmu::{Mmu, MmuConfig};
use typed_pgtable::provenance::pte_offset_map;

const VA: u64 = 0x20_1000;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    mmu.map_page(VA).unwrap();
    let pmd = {
        let mm = mmu.mmap_read_lock();
        mm.pmd_offset(VA).unwrap().unwrap()
    };
    let _map = pte_offset_map(&pmd, VA);
}
