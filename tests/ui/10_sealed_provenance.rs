//! Implementing the sealed `Provenance` trait for a downstream type.
//!
//! The set of provenances (and so the set of proofs `ProvesProtection` can ever accept) is
//! closed: a new provenance could smuggle an unproven pmd into `pte_offset_map`. `Provenance`
//! has a private supertrait, so a local type cannot implement it.

use typed_pgtable::provenance::{PgtableBackend, Provenance};

struct Mine;

impl Provenance for Mine {
    type Source<'a, B: PgtableBackend + 'a> = ();
    fn read<'a, B: PgtableBackend + 'a>(_: &B, _: &()) -> B::PmdSnapshot {
        unimplemented!()
    }
    fn recheck_slot<'a, B: PgtableBackend + 'a>(_: &()) -> Option<&'a B::PmdSlot> {
        None
    }
}

fn main() {}
