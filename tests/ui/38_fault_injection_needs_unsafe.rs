//! Soundness class 4: the MMU's fault-injection hooks are `unsafe`.
//!
//! `inject_pmd` writes a pmd without the PTE lock and without checking the value (it can make
//! two slots name one table); `put_page` drops a page reference no `PageRef` holds. Both can
//! break the backend contract, so safe code cannot call them.

use typed_pgtable::mmu::{Mmu, MmuConfig, migration_entry};

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let head = mmu.map_huge(0x20_0000).unwrap();
    mmu.inject_pmd(0x20_0000, migration_entry(7)).unwrap();
    mmu.put_page(head);
}
