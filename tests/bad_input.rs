//! Malformed inputs, as a table: each row sets up an MMU, makes one bad call, and checks the
//! exact typed error and that a full dump of the MMU (page tables at every level, deposits,
//! free frames, VMAs) is the same before and after.

use typed_pgtable::Error;
use typed_pgtable::mmu::{Mmu, MmuConfig, PMD_SIZE, VmaKind};
use typed_pgtable::provenance::{DetachedPmd, pmd_lock, pmdp_get_lockless};

const LIMIT: u64 = 1 << 32;
const A: u64 = 0x4000_0000;

fn mmu(frames: usize) -> Mmu {
    Mmu::new(MmuConfig {
        frames,
        va_limit: LIMIT,
    })
    .unwrap()
}

/// Maps a few pages and a huge page and creates VMAs, so that a bad call has state to damage.
fn busy(frames: usize) -> Mmu {
    let m = mmu(frames);
    m.mmap(A, 2 * PMD_SIZE, VmaKind::Anon).unwrap();
    m.mmap(A + 4 * PMD_SIZE, PMD_SIZE, VmaKind::File).unwrap();
    // Empty, for moves between empty pmds.
    m.mmap(A + 6 * PMD_SIZE, 2 * PMD_SIZE, VmaKind::File)
        .unwrap();
    for i in 0..8 {
        m.map_page(A + i * 0x1000).unwrap();
    }
    m.map_page(A + 4 * PMD_SIZE).unwrap();
    if frames >= 2048 {
        m.map_huge(A + PMD_SIZE).unwrap();
    }
    m
}

type Call = fn(&Mmu) -> Result<(), Error>;

fn other_mmu_guard(m: &Mmu) -> Result<(), Error> {
    let other = mmu(64);
    let guard = other.rcu_read_lock();
    m.pmd_copy_lockless(&guard, A).map(drop)
}

fn other_mmu_pmd(m: &Mmu) -> Result<(), Error> {
    let other = mmu(64);
    other.map_page(A).unwrap();
    let mm = other.mmap_read_lock();
    let pmd = mm.pmd_offset(A)?.unwrap();
    let guard = m.rcu_read_lock();
    pmdp_get_lockless(&pmd, &guard).map(drop)
}

fn other_mmu_table(m: &Mmu) -> Result<(), Error> {
    let other = mmu(64);
    let table = DetachedPmd::pte_alloc_one(&other).unwrap();
    let mm = m.mmap_read_lock();
    let pmd = mm.pmd_offset(A + 3 * PMD_SIZE)?.unwrap();
    let pml = pmd_lock(&pmd);
    match table.pmd_populate(&mm, &pml) {
        Ok(()) => Ok(()),
        Err(r) => {
            r.value.pte_free();
            Err(r.error)
        }
    }
}

fn rows() -> Vec<(&'static str, usize, Call, Error)> {
    vec![
        (
            "non-canonical page",
            4096,
            |m| m.map_page(0x0000_8000_0000_0000).map(drop),
            Error::NonCanonical {
                addr: 0x0000_8000_0000_0000,
            },
        ),
        (
            "non-canonical translate",
            4096,
            |m| m.translate(0xdead_0000_0000_0000).map(drop),
            Error::NonCanonical {
                addr: 0xdead_0000_0000_0000,
            },
        ),
        (
            "misaligned page",
            4096,
            |m| m.map_page(A + 0x10_1001).map(drop),
            Error::Misaligned {
                addr: A + 0x10_1001,
                align: 0x1000,
            },
        ),
        (
            "misaligned huge",
            4096,
            |m| m.map_huge(A + 0x1000).map(drop),
            Error::Misaligned {
                addr: A + 0x1000,
                align: PMD_SIZE,
            },
        ),
        (
            "out of range page",
            4096,
            |m| m.map_page(LIMIT).map(drop),
            Error::OutOfRange {
                addr: LIMIT,
                limit: LIMIT,
            },
        ),
        (
            "range crossing the limit",
            4096,
            |m| m.map_pages(LIMIT - 0x1000, 2).map(drop),
            Error::OutOfRange {
                addr: LIMIT + 0x1000 - 1,
                limit: LIMIT,
            },
        ),
        (
            "overlapping VMA",
            4096,
            |m| m.mmap(A + 0x10_0000, PMD_SIZE, VmaKind::File),
            Error::AlreadyMapped {
                addr: A + 0x10_0000,
            },
        ),
        (
            "zero-length mmap",
            4096,
            |m| m.mmap(A + 8 * PMD_SIZE, 0, VmaKind::Anon),
            Error::EmptyRange {
                addr: A + 8 * PMD_SIZE,
            },
        ),
        (
            "zero-length munmap",
            4096,
            |m| m.munmap(A, 0).map(drop),
            Error::EmptyRange { addr: A },
        ),
        (
            "zero-length madvise",
            4096,
            |m| m.madvise_dontneed(A, 0, true).map(drop),
            Error::EmptyRange { addr: A },
        ),
        (
            "zero-count map_pages",
            4096,
            |m| m.map_pages(A + 8 * PMD_SIZE, 0).map(drop),
            Error::EmptyRange {
                addr: A + 8 * PMD_SIZE,
            },
        ),
        (
            "munmap cutting a VMA",
            4096,
            |m| m.munmap(A, PMD_SIZE).map(drop),
            Error::PartialVma { addr: A },
        ),
        ("wrong-MMU guard", 4096, other_mmu_guard, Error::WrongMmu),
        ("wrong-MMU pmd", 4096, other_mmu_pmd, Error::WrongMmu),
        ("wrong-MMU table", 4096, other_mmu_table, Error::WrongMmu),
        (
            "frames exhausted mid-range",
            64,
            |m| m.map_pages(A + 6 * PMD_SIZE, 200).map(drop),
            Error::OutOfFrames {
                needed: 200 + 1,
                free: 49,
            },
        ),
        (
            "page in the way mid-range",
            4096,
            |m| m.map_pages(A + 0x4000, 16).map(drop),
            Error::AlreadyMapped { addr: A + 0x4000 },
        ),
        (
            "huge page in the way mid-range",
            4096,
            |m| m.map_pages(A + PMD_SIZE - 0x2000, 4).map(drop),
            Error::HugeInTheWay { addr: A + PMD_SIZE },
        ),
        (
            "move onto a mapped pmd",
            4096,
            |m| m.move_normal_pmd(A, A + PMD_SIZE),
            Error::AlreadyMapped { addr: A + PMD_SIZE },
        ),
        (
            "move into a VMA of the other kind",
            4096,
            |m| m.move_normal_pmd(A, A + 4 * PMD_SIZE),
            Error::NotInVma {
                addr: A + 4 * PMD_SIZE,
            },
        ),
        (
            "move to where no VMA is",
            4096,
            |m| m.move_normal_pmd(A, A + 5 * PMD_SIZE),
            Error::NotInVma {
                addr: A + 5 * PMD_SIZE,
            },
        ),
        (
            "move from an empty pmd",
            4096,
            |m| m.move_normal_pmd(A + 6 * PMD_SIZE, A + 7 * PMD_SIZE),
            Error::NotMapped {
                addr: A + 6 * PMD_SIZE,
            },
        ),
        (
            "anon collapse outside an anon VMA",
            4096,
            |m| m.collapse_huge_page(A + 4 * PMD_SIZE).map(drop),
            Error::NotInVma {
                addr: A + 4 * PMD_SIZE,
            },
        ),
        (
            "cow outside a file VMA",
            4096,
            |m| m.cow_fault(A).map(drop),
            Error::NotInVma { addr: A },
        ),
        (
            "unmap of nothing",
            4096,
            |m| m.unmap_page(A + 0x20_0000 * 3).map(drop),
            Error::NotMapped {
                addr: A + 0x20_0000 * 3,
            },
        ),
    ]
}

#[test]
fn every_bad_input_gives_its_error_and_changes_nothing() {
    let rows = rows();
    assert!(rows.len() >= 12);
    for (name, frames, call, expected) in rows {
        let m = busy(frames);
        m.rcu_barrier();
        let before = m.dump();
        let got = call(&m);
        m.rcu_barrier();
        assert_eq!(got, Err(expected), "{name}");
        assert_eq!(m.dump(), before, "{name}: the failing call changed the MMU");
        assert!(m.check_tables().is_empty(), "{name}");
        assert_eq!(m.audit().violations(), 0, "{name}");
    }
}

#[test]
fn invalid_configurations() {
    for (cfg, what) in [
        (
            MmuConfig {
                frames: 0,
                va_limit: LIMIT,
            },
            "no frames",
        ),
        (
            MmuConfig {
                frames: 15,
                va_limit: LIMIT,
            },
            "too few frames",
        ),
        (
            MmuConfig {
                frames: 1 << 27,
                va_limit: LIMIT,
            },
            "too many frames",
        ),
        (
            MmuConfig {
                frames: 64,
                va_limit: 0,
            },
            "empty space",
        ),
        (
            MmuConfig {
                frames: 64,
                va_limit: PMD_SIZE + 0x1000,
            },
            "unaligned limit",
        ),
        (
            MmuConfig {
                frames: 64,
                va_limit: 1 << 48,
            },
            "beyond 47 bits",
        ),
    ] {
        assert!(
            matches!(Mmu::new(cfg), Err(Error::InvalidConfig { .. })),
            "{what}"
        );
    }
}

#[test]
fn map_pages_maps_everything_or_nothing() {
    let m = mmu(4096);
    let pfns = m.map_pages(A, 600).unwrap();
    assert_eq!(pfns.len(), 600);
    for (i, pfn) in pfns.iter().enumerate() {
        assert_eq!(m.translate(A + i as u64 * 0x1000).unwrap(), Some(pfn << 12));
    }
}
