//! Building the `CopiedUnderRcu<'g>` proof marker by hand.
//!
//! `CopiedUnderRcu<'g>` claims "read inside an RCU section that lasts for `'g`"; only a real
//! guard may vouch for that. Its fields are private, so it cannot be built downstream.

use std::marker::PhantomData;
use typed_pgtable::provenance::CopiedUnderRcu;

fn main() {
    let _proof: CopiedUnderRcu<'static> = CopiedUnderRcu {
        _section: PhantomData,
        _not_send: PhantomData,
    };
}
