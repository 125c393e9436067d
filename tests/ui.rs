//! Compile-time tests of the provenance API (trybuild).
//!
//! `tests/ui/*.rs` are programs that must **not** compile: each one commits a single misuse
//! (mapping a pmd without a protection proof, letting a map outlive its RCU guard, sending a
//! guard to another thread, forging a marker, implementing a sealed trait, writing through a
//! lock that does not prove the table is installed, reusing a consumed detached table, ...)
//! and its `.stderr` snapshot pins the exact error, so that a case cannot start failing for
//! an unrelated reason unnoticed. `tests/ui/pass/*.rs` are the intended uses of the same API
//! (the three cases and the `rw_nolock` revalidation); they must compile and run.
//!
//! Diagnostics change between compiler releases, so the snapshots are checked only on the
//! stable release they were blessed with. Re-bless with
//! `TRYBUILD=overwrite cargo test --all-features --test ui` and read every changed `.stderr`.

#[rustversion::attr(not(stable(1.95)), ignore = "ui snapshots blessed on stable 1.95")]
#[cfg_attr(miri, ignore = "trybuild spawns cargo")]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
