//! Declaring a downstream type a protection proof (`impl ProvesProtection for Mine`).
//!
//! `ProvesProtection` is the bound of `pte_offset_map`; implementing it for a type of one's
//! own would make any pmd mappable. It requires the sealed `Provenance`, which a local type
//! cannot implement, so the impl is rejected.

use typed_pgtable::provenance::{Attached, ProvesProtection};

struct Mine;

impl ProvesProtection for Mine {
    type LockAccess = Attached;
}

fn main() {}
