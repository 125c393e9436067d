//! Every "nomap" case of `__pte_offset_map` gives a typed reason through every map function,
//! never a panic, and the operations built on them turn it into a typed error.

use typed_pgtable::mmu::{
    Mmu, MmuConfig, POISON, PmdKind, RESERVED, huge_entry, migration_entry, table_entry,
};
use typed_pgtable::provenance::{
    pte_offset_map, pte_offset_map_lock, pte_offset_map_ro_nolock, pte_offset_map_rw_nolock,
};
use typed_pgtable::{Error, NoMap};

const VA: u64 = 0x60_0000;

fn mmu() -> Mmu {
    // Miri keeps metadata for every byte of the arena: keep it small there (no huge pages).
    let frames = if cfg!(miri) { 64 } else { 2048 };
    Mmu::new(MmuConfig {
        frames,
        va_limit: 1 << 30,
    })
    .unwrap()
}

/// Maps through all four functions on the in-table pmd and through a lockless copy, and
/// returns the reasons they gave.
fn reasons(mmu: &Mmu) -> Vec<Option<NoMap>> {
    let mm = mmu.mmap_read_lock();
    let pmd = mm.pmd_offset(VA).unwrap().unwrap();
    let guard = mmu.rcu_read_lock();
    let copy = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
    vec![
        pte_offset_map(&pmd, VA).err(),
        pte_offset_map_lock(&pmd, VA).err(),
        pte_offset_map_ro_nolock(&pmd, VA).err(),
        pte_offset_map_rw_nolock(&pmd, VA).err(),
        pte_offset_map(&copy, VA).err(),
        pte_offset_map_lock(&copy, VA).err(),
    ]
}

fn with_pmd(raw: u64) -> Mmu {
    let mmu = mmu();
    // Create the upper levels with a page elsewhere in the same 1 GiB, then place `raw`.
    mmu.map_page(VA + 0x20_0000).unwrap();
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    unsafe { mmu.inject_pmd(VA, raw) }.unwrap();
    mmu
}

#[test]
fn none() {
    let mmu = with_pmd(0);
    assert!(reasons(&mmu).iter().all(|r| *r == Some(NoMap::None)));
    assert_eq!(mmu.translate(VA).unwrap(), None);
}

#[test]
fn migration() {
    let mmu = with_pmd(migration_entry(0x1234));
    assert!(reasons(&mmu).iter().all(|r| *r == Some(NoMap::Migration)));
    assert_eq!(mmu.translate(VA).unwrap(), None);
    assert_eq!(mmu.map_page(VA), Err(Error::HugeInTheWay { addr: VA }));
}

#[test]
fn not_present() {
    // Non-present, swap type 3: not a migration entry.
    let mmu = with_pmd(0x5000 | (3 << 1));
    assert!(reasons(&mmu).iter().all(|r| *r == Some(NoMap::NotPresent)));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "a huge page needs a 1024-frame arena, too large for Miri"
)]
fn huge_leaf() {
    let mmu = mmu();
    mmu.map_huge(VA).unwrap();
    assert!(reasons(&mmu).iter().all(|r| *r == Some(NoMap::Huge)));
    assert!(mmu.translate(VA + 0x1234).unwrap().is_some());
}

#[test]
fn bad_values() {
    for raw in [
        POISON,
        table_entry(1) | RESERVED,
        table_entry(0),       // frame 0 is never a table
        table_entry(1 << 30), // beyond physical memory
        huge_entry(3),        // misaligned huge frame
        huge_entry(1 << 20),  // huge page beyond physical memory
    ] {
        let mmu = with_pmd(raw);
        let got = reasons(&mmu);
        assert!(
            got.iter().all(|r| *r == Some(NoMap::Bad)),
            "{raw:#x} gave {got:?}"
        );
        assert_eq!(mmu.translate(VA).unwrap(), None);
        let mm = mmu.mmap_read_lock();
        assert_eq!(
            mm.pmd_offset(VA).unwrap().unwrap().pmd_val().kind(),
            PmdKind::Bad
        );
    }
}

#[test]
fn table_maps() {
    let mmu = mmu();
    mmu.map_page(VA).unwrap();
    assert!(reasons(&mmu).iter().all(|r| r.is_none()));
}

#[test]
fn inject_needs_upper_levels() {
    let mmu = mmu();
    // SAFETY: fault injection under the test's control: the value names no live table of another slot, and page references are accounted for as the test describes.
    assert_eq!(
        unsafe { mmu.inject_pmd(VA, 0) },
        Err(Error::NotMapped { addr: VA })
    );
}
