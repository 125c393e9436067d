//! Building the `Detached` proof marker by hand.
//!
//! `Detached` claims "the holder owns this table"; only `DetachedPmd` may vouch for that. Its
//! field is private, so it cannot be built downstream.

use typed_pgtable::provenance::Detached;

fn main() {
    let _proof = Detached { _priv: () };
}
