//! Page tables as real heap memory: 4 KiB-aligned tables of 512 descriptors, each with its
//! descriptor page beside it, linked by their real addresses.
//!
//! # Layout
//!
//! A table is one `alloc_zeroed` allocation of two 4 KiB pages, aligned to 4 KiB:
//!
//! ```text
//!  +0x0000  descriptors[0..512]   the table itself: its address goes into the parent's
//!           (8 bytes each)         descriptor, in the output-address field (bits 47:12)
//!  +0x1000  the table's own        PTE table: its split PTE lock (`ptl`)
//!           descriptor             PMD table: the PMD lock and one deposit link per slot
//! ```
//!
//! The kernel keeps a table's lock in its `struct ptdesc`, found from the table's address; here
//! the descriptor is simply the page after the table, found by the same address arithmetic the
//! type system can check (a field of one `#[repr(C)]` struct). Table and lock live and die
//! together, so the lock stays valid exactly as long as the table's memory (contract item 1 of
//! [`PgtableBackend`](crate::provenance::PgtableBackend)). All-zero memory is an empty table,
//! an unlocked lock and empty deposit links, so nothing but `alloc_zeroed` is needed.
//!
//! The "physical address" of a table is its virtual address: the heap backend is an identity
//! map. An allocation whose address does not fit in the 36 bits of the output address
//! (bits 47:12) is given back and reported as out of memory.
//!
//! # Entries
//!
//! A PTE table holds `AtomicU64` descriptors ([`Pte`](super::desc::Pte) bits): a PTE maps a
//! page frame *number*, no memory behind it, so no pointer is needed. A PMD slot
//! ([`PmdSlot`]) holds an `AtomicPtr<u8>` whose **address is the 64-bit descriptor**: a table
//! descriptor is the PTE table's pointer with bits\[1:0\] = `0b11` set by
//! `pointer::map_addr`, so it keeps the pointer's provenance, and the walk
//! recovers the table with `pointer::with_addr` rather than an integer-to-pointer
//! cast. Miri then checks every access through a slot against the allocation the pointer came
//! from, and a read of a freed table is undefined behaviour it reports, even if the allocator
//! reused the address. Blocks and other leaf values carry no provenance (they are never
//! dereferenced). This needs 64-bit pointers, which the module asserts.
//!
//! The descriptors and slots are `core` atomics, not [`crate::sync`]'s: they are the memory a
//! hardware walker would read, and must be valid when zeroed. The locks use [`crate::sync`].

use super::desc::{DESC_TABLE, DESC_TYPE_MASK, OA_MASK, PTRS_PER_TABLE, oa_fits};
use super::spin::RawSpinLock;
use crate::error::NoMap;
use alloc::alloc::{alloc_zeroed, dealloc};
use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

const _: () = assert!(
    usize::BITS == 64,
    "the heap backend stores 64-bit descriptors in pointers"
);

/// The memory of one PTE table: the 4 KiB table, then its descriptor page.
#[repr(C, align(4096))]
pub(super) struct PtPage {
    entries: [AtomicU64; PTRS_PER_TABLE],
    /// The split PTE lock (`ptdesc->ptl`).
    ptl: RawSpinLock,
}

/// The memory of one PMD table: the 4 KiB table, then its descriptor page.
#[repr(C, align(4096))]
pub(super) struct PmdPage {
    pub(super) slots: [PmdSlot; PTRS_PER_TABLE],
    /// The PMD lock of the whole table (`pmd_lockptr`).
    pub(super) pml: RawSpinLock,
    /// Per slot: the PTE table deposited there (`pgtable_trans_huge_deposit`), or null.
    /// Changed only under `pml`.
    pub(super) deposits: [AtomicPtr<PtPage>; PTRS_PER_TABLE],
}

const _: () = assert!(core::mem::offset_of!(PtPage, ptl) == 4096);
const _: () = assert!(core::mem::offset_of!(PmdPage, pml) == 4096);

/// Allocates a zeroed `T`, aligned to 4 KiB, whose address fits a descriptor's output address.
fn alloc_page<T>() -> Option<NonNull<T>> {
    let layout = Layout::new::<T>();
    // SAFETY: `T` is one of the page types above: not zero-sized.
    let p = NonNull::new(unsafe { alloc_zeroed(layout) }.cast::<T>())?;
    if oa_fits(p.as_ptr().addr() as u64) {
        Some(p)
    } else {
        // SAFETY: allocated just above with this layout, and never handed out.
        unsafe { dealloc(p.as_ptr().cast(), layout) };
        None
    }
}

/// A handle naming one PTE table (the backend's `Table`): a pointer to its memory.
///
/// # Invariants
/// `0` points to a `PtPage` allocated by `PteTableRef::alloc` whose address fits the
/// output-address field. The handle does **not** keep the memory alive: dereferencing it needs
/// the table to be protected (see [`PgtableBackend`](crate::provenance::PgtableBackend)),
/// which is why every accessor is `unsafe`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PteTableRef(NonNull<PtPage>);

// SAFETY: the handle is a name; what it names is shared only through atomics and the table's
// own lock, and only under the protection the `unsafe` accessors demand, on any thread.
unsafe impl Send for PteTableRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for PteTableRef {}

impl PteTableRef {
    /// Allocates an empty, unlocked table; `None` when out of memory.
    pub(super) fn alloc() -> Option<PteTableRef> {
        // INVARIANT: `alloc_page` checked the address.
        alloc_page::<PtPage>().map(PteTableRef)
    }

    /// Frees the table and its lock.
    ///
    /// # Safety
    /// Nobody holds or can reach the table any more (no slot names it, no walker is inside it,
    /// nobody else will free it).
    pub(super) unsafe fn free(self) {
        // SAFETY: allocated by `alloc_page::<PtPage>` with this layout (type invariant); no
        // one uses it any more (caller).
        unsafe { dealloc(self.0.as_ptr().cast(), Layout::new::<PtPage>()) }
    }

    /// The table's physical (here: virtual) address.
    pub fn paddr(self) -> u64 {
        self.0.as_ptr().addr() as u64
    }

    /// Descriptor `index` of the table.
    ///
    /// # Safety
    /// The table is protected for `'a`; `index < PTRS_PER_TABLE`.
    pub(super) unsafe fn entry<'a>(self, index: usize) -> &'a AtomicU64 {
        // SAFETY: the memory is alive for 'a (caller) and holds a valid `PtPage` (zeroed atomics
        // are valid); every access to it is atomic, so a shared reference is sound.
        unsafe { (*self.0.as_ptr()).entries.get_unchecked(index) }
    }

    /// The table's split PTE lock.
    ///
    /// # Safety
    /// The table is protected for `'a`.
    pub(super) unsafe fn ptl<'a>(self) -> &'a RawSpinLock {
        // SAFETY: as in `entry`; the lock lives in the same allocation as the table.
        unsafe { &(*self.0.as_ptr()).ptl }
    }

    /// The raw pointer, for a deposit link.
    pub(super) fn as_ptr(self) -> *mut PtPage {
        self.0.as_ptr()
    }

    /// The handle for a pointer a deposit link held.
    ///
    /// # Safety
    /// `p` came from [`as_ptr`](Self::as_ptr) of a live handle.
    pub(super) unsafe fn from_ptr(p: NonNull<PtPage>) -> PteTableRef {
        // INVARIANT: the caller promises `p` came from a handle.
        PteTableRef(p)
    }
}

impl fmt::Debug for PteTableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PteTable@{:#x}", self.paddr())
    }
}

/// The PMD table at the root of a [`HeapPgtable`](super::HeapPgtable).
///
/// # Invariants
/// `0` points to a live [`PmdPage`] from [`alloc_page`], owned by this value.
pub(super) struct PmdTable(NonNull<PmdPage>);

impl PmdTable {
    /// A zeroed PMD table; `None` when out of memory.
    pub(super) fn alloc() -> Option<PmdTable> {
        // INVARIANT: a fresh allocation, owned by the new value.
        alloc_page::<PmdPage>().map(PmdTable)
    }

    /// The table's memory.
    pub(super) fn page(&self) -> &PmdPage {
        // SAFETY: owned and alive while `self` is (type invariant); all-atomic contents.
        unsafe { self.0.as_ref() }
    }

    /// Index of `slot` in this table, if it is one of this table's slots.
    pub(super) fn index_of(&self, slot: &PmdSlot) -> Option<usize> {
        let base = self.page().slots.as_ptr().addr();
        let off = ptr::from_ref(slot).addr().wrapping_sub(base);
        let i = off / core::mem::size_of::<PmdSlot>();
        (off % core::mem::size_of::<PmdSlot>() == 0 && i < PTRS_PER_TABLE).then_some(i)
    }
}

impl Drop for PmdTable {
    fn drop(&mut self) {
        // SAFETY: owned (type invariant), allocated with this layout; no borrow of it survives
        // `&mut self`.
        unsafe { dealloc(self.0.as_ptr().cast(), Layout::new::<PmdPage>()) }
    }
}

// SAFETY: the table is only ever shared as `&PmdPage`, whose contents are atomics and a lock.
unsafe impl Send for PmdTable {}
// SAFETY: as for `Send`.
unsafe impl Sync for PmdTable {}

/// One pmd slot (`pmd_t *`): an atomic pointer whose address is the descriptor.
#[repr(transparent)]
pub struct PmdSlot(AtomicPtr<u8>);

impl PmdSlot {
    pub(super) fn load(&self) -> HeapPmd {
        // Acquire: pairs with the Release of `pmd_populate`, so the filled table is visible.
        HeapPmd(self.0.load(Ordering::Acquire))
    }

    pub(super) fn store(&self, v: HeapPmd) {
        self.0.store(v.0, Ordering::Release)
    }

    pub(super) fn swap(&self, v: HeapPmd) -> HeapPmd {
        HeapPmd(self.0.swap(v.0, Ordering::AcqRel))
    }
}

impl fmt::Debug for PmdSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PmdSlot").field(&self.load()).finish()
    }
}

/// A pmd value (`pmd_t`, the backend's `PmdSnapshot`): the descriptor bits, and for a table
/// descriptor the provenance of the table it names.
///
/// # Invariants
/// If the type bits say *table*, the pointer came from a [`PteTableRef`] by
/// [`of_table`](Self::of_table) (possibly through a slot), with `0b11` or'ed into its address.
/// Other values carry no provenance.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HeapPmd(*mut u8);

// SAFETY: a pmd value is plain data; the pointer inside is dereferenced only through a
// `PteTableRef`, whose accessors require protection.
unsafe impl Send for HeapPmd {}
// SAFETY: as for `Send`.
unsafe impl Sync for HeapPmd {}

impl HeapPmd {
    /// The empty entry.
    pub const NONE: HeapPmd = HeapPmd(ptr::null_mut());

    /// A value that names no table (a block, a swap or migration entry, garbage), or `None`
    /// for a value whose type bits say *table*: only a real table makes such a value.
    pub fn from_leaf_bits(bits: u64) -> Option<HeapPmd> {
        // INVARIANT: not a table descriptor, so no provenance is needed.
        (bits & DESC_TYPE_MASK != DESC_TABLE)
            .then(|| HeapPmd(ptr::without_provenance_mut(bits as usize)))
    }

    /// The descriptor that names `table` (`__pmd_populate`'s value).
    pub fn of_table(table: PteTableRef) -> HeapPmd {
        // INVARIANT: the table's pointer, its address 4 KiB aligned and within OA_MASK (the
        // handle's invariant), with the table type or'ed in.
        HeapPmd(
            table
                .as_ptr()
                .cast::<u8>()
                .map_addr(|a| a | DESC_TABLE as usize),
        )
    }

    /// The descriptor bits.
    pub fn bits(self) -> u64 {
        self.0.addr() as u64
    }

    /// The descriptor as [`Pmd`](super::desc::Pmd) bits.
    pub fn desc(self) -> super::desc::Pmd {
        super::desc::Pmd::from_bits(self.bits())
    }

    /// Classifies the value: the table it names, or why it names none.
    pub fn table(self) -> Result<PteTableRef, NoMap> {
        let bits = self.bits();
        match bits & DESC_TYPE_MASK {
            _ if bits == 0 => Err(NoMap::None),
            0b00 | 0b10 => Err(NoMap::NotPresent),
            0b01 => Err(NoMap::Huge),
            _ => {
                let p = self.0.with_addr((bits & OA_MASK) as usize).cast::<PtPage>();
                // INVARIANT: a table value's pointer came from a handle (type invariant), and
                // masking the type bits gives the handle's pointer back.
                NonNull::new(p).map(PteTableRef).ok_or(NoMap::Bad)
            }
        }
    }
}

impl fmt::Debug for HeapPmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeapPmd({:#018x})", self.bits())
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_a_real_aligned_page_with_its_lock_beside_it() {
        let t = PteTableRef::alloc().unwrap();
        assert_eq!(t.paddr() % 4096, 0);
        // SAFETY: freshly allocated and owned here until the free below.
        unsafe {
            assert_eq!(t.entry(511).load(Ordering::Relaxed), 0);
            t.entry(3).store(0x42, Ordering::Relaxed);
            assert!(!t.ptl().is_locked());
        }
        let pmd = HeapPmd::of_table(t);
        assert_eq!(pmd.bits(), t.paddr() | 0b11);
        assert_eq!(pmd.table(), Ok(t));
        // SAFETY: as above; the round trip kept the provenance.
        assert_eq!(
            unsafe { pmd.table().unwrap().entry(3) }.load(Ordering::Relaxed),
            0x42
        );
        // SAFETY: owned, nobody else can reach it.
        unsafe { t.free() };
    }

    #[test]
    fn leaf_values_classify_without_provenance() {
        assert_eq!(HeapPmd::NONE.table(), Err(NoMap::None));
        assert_eq!(
            HeapPmd::from_leaf_bits(0x20_0401).unwrap().table(),
            Err(NoMap::Huge)
        );
        assert_eq!(
            HeapPmd::from_leaf_bits(0xdead_0000).unwrap().table(),
            Err(NoMap::NotPresent)
        );
        assert_eq!(
            HeapPmd::from_leaf_bits(0x7003),
            None,
            "a table value needs a table"
        );
        let root = PmdTable::alloc().unwrap();
        let slots = &root.page().slots;
        assert_eq!(root.index_of(&slots[7]), Some(7));
        let other = PmdSlot(AtomicPtr::new(ptr::null_mut()));
        assert_eq!(root.index_of(&other), None);
        assert!(std::format!("{:?}", slots[0]).contains("0x0000000000000000"));
    }
}
