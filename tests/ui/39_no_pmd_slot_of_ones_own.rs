//! Soundness class 5: a pmd slot made outside an MMU.
//!
//! Every slot a walk can name lies in some MMU's frame arena; a slot of one's own (once made
//! with `PmdSlot::default()`) handed to the backend's lock functions would be a slot of no
//! MMU. `PmdSlot` has no public constructor, and the backend's slot functions are `unsafe`.

use typed_pgtable::mmu::{Mmu, MmuConfig, PmdSlot};
use typed_pgtable::provenance::PgtableBackend;

fn main() {
    let mmu = Mmu::new(MmuConfig::default()).unwrap();
    let slot = PmdSlot::default();
    PgtableBackend::pmd_lock(&mmu, &slot);
}
