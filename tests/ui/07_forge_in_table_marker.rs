//! Building the `InTable` proof marker by hand.
//!
//! A marker is a proof; if downstream code could make one, it could claim protection it does
//! not have. `InTable` has a private field, so it cannot be constructed outside the crate.

use typed_pgtable::provenance::InTable;

fn main() {
    let _proof = InTable { _priv: () };
}
