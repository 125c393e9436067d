//! Physical memory: an arena of 4 KiB frames with per-frame descriptors.
//!
//! Frame memory is a flat array of 8-byte entry cells, never deallocated while the MMU lives:
//! a "free" is logical (generation bump, poison fill, back to the allocator). That keeps every
//! access memory-safe in Rust terms while the [`Audit`] reports each access to a freed table as
//! the use-after-free it would be in a kernel.

use super::audit::Audit;
use super::entry::POISON;
use super::locks::spin::SpinLock;
use crate::error::Error;
use std::boxed::Box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::vec::Vec;

/// Entries per table (and 8-byte cells per frame).
pub const ENTRIES: usize = 512;

/// One 8-byte entry cell of a page-table frame. The provenance layer sees it as a pmd slot.
///
/// Only the MMU makes them (there is no public constructor and no `Default`): every slot a
/// caller can name lies in some MMU's frame arena.
#[repr(transparent)]
#[derive(Debug)]
pub struct PmdSlot(pub(crate) AtomicU64);

/// What a frame is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// In the allocator.
    Free = 0,
    /// A data page.
    Data = 1,
    /// A PTE table (level 1).
    Pte = 2,
    /// A PMD table (level 2).
    Pmd = 3,
    /// A PUD table (level 3).
    Pud = 4,
    /// The PGD (level 4).
    Pgd = 5,
    /// Never allocated (frame 0).
    Reserved = 6,
}

impl FrameKind {
    fn from_u8(v: u8) -> FrameKind {
        match v {
            1 => FrameKind::Data,
            2 => FrameKind::Pte,
            3 => FrameKind::Pmd,
            4 => FrameKind::Pud,
            5 => FrameKind::Pgd,
            6 => FrameKind::Reserved,
            _ => FrameKind::Free,
        }
    }
}

/// The descriptor of one frame (`struct ptdesc`).
///
/// The split lock lives here, as in the kernel; descriptors are never deallocated, so a lock
/// outlives every grace period of its table. Taking the lock of a freed table is still reported
/// by the audit, as the logical use-after-free it is (bug B9).
#[derive(Debug, Default)]
pub(crate) struct FrameDesc {
    pub(crate) generation: AtomicU32,
    kind: AtomicU8,
    pub(crate) lock: SpinLock,
    /// References to a data frame (its mappings and pins); 0 when not a data page in use.
    pub(crate) refs: AtomicU32,
    /// The head of a huge page (a 512-frame folio): its last reference frees all 512 frames.
    compound: AtomicBool,
    /// For a tail frame of a huge page, the head's frame; 0 otherwise. A tail's references
    /// live on its head, as a folio's do.
    head_of: AtomicU64,
    /// Tables deposited on slots of this PMD table: (slot index, PTE table frame), FIFO.
    pub(crate) deposit: Mutex<Vec<(u16, u64)>>,
    /// For a PMD table: the first virtual address it maps (upper tables are never freed while
    /// the MMU lives, so this never changes once set).
    pub(crate) pmd_base: AtomicU64,
    /// For a PTE table: whether a slot names it now (the audit's view, kept by populate and
    /// flush).
    pub(crate) installed: AtomicBool,
    /// For a PTE table that was unlinked: the RCU domain's completed grace-period waits at the
    /// unlink, plus one (0: never unlinked). An immediate free needs one to have completed
    /// since.
    pub(crate) unlinked_at: AtomicU64,
    /// For a PTE table that was unlinked: whether `page_table_check_pte_clear_range` has run
    /// on it since (rule I11).
    pub(crate) checked: AtomicBool,
}

struct Bitmap {
    words: Vec<u64>,
    hint: usize,
}

/// `n` zeroed entry cells in one zeroed allocation, instead of `n` separate constructions;
/// `None` if the allocator cannot supply them (a huge arena on a small machine).
fn zeroed_cells(n: usize) -> Option<Box<[PmdSlot]>> {
    let layout = std::alloc::Layout::array::<PmdSlot>(n).ok()?;
    if layout.size() == 0 {
        return Some(Box::new([]));
    }
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<PmdSlot>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is a live allocation made with the global allocator for exactly `n`
    // `PmdSlot`s (`Layout::array`), and all-zero bytes are a valid `PmdSlot`
    // (`#[repr(transparent)]` over `AtomicU64`, which has the layout and validity of `u64`).
    Some(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, n)) })
}

/// The arena.
pub(crate) struct Frames {
    mem: Box<[PmdSlot]>,
    desc: Box<[FrameDesc]>,
    alloc: Mutex<Bitmap>,
    free: AtomicUsize,
    nframes: usize,
    pub(crate) audit: Audit,
}

impl Frames {
    /// An arena of `nframes` frames, or `None` if the memory for it cannot be had.
    pub(crate) fn new(nframes: usize) -> Option<Frames> {
        let mem = zeroed_cells(nframes.checked_mul(ENTRIES)?)?;
        let mut desc = Vec::new();
        desc.try_reserve_exact(nframes).ok()?;
        desc.extend((0..nframes).map(|_| FrameDesc::default()));
        let desc = desc.into_boxed_slice();
        let mut words = std::vec![0u64; nframes.div_ceil(64)];
        // Frame 0 is reserved; bits past the end are marked used.
        words[0] |= 1;
        for pfn in nframes..words.len() * 64 {
            words[pfn / 64] |= 1 << (pfn % 64);
        }
        desc[0]
            .kind
            .store(FrameKind::Reserved as u8, Ordering::Relaxed);
        Some(Frames {
            mem,
            desc,
            alloc: Mutex::new(Bitmap { words, hint: 0 }),
            free: AtomicUsize::new(nframes - 1),
            nframes,
            audit: Audit::default(),
        })
    }

    pub(crate) fn nframes(&self) -> usize {
        self.nframes
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    pub(crate) fn cell(&self, pfn: u64, index: usize) -> &PmdSlot {
        &self.mem[pfn as usize * ENTRIES + index % ENTRIES]
    }

    pub(crate) fn desc(&self, pfn: u64) -> &FrameDesc {
        &self.desc[pfn as usize]
    }

    pub(crate) fn kind(&self, pfn: u64) -> FrameKind {
        FrameKind::from_u8(self.desc[pfn as usize].kind.load(Ordering::Acquire))
    }

    /// Frame and index of a cell of this arena, or `None` for a cell elsewhere.
    pub(crate) fn locate(&self, slot: &PmdSlot) -> Option<(u64, usize)> {
        let base = self.mem.as_ptr() as usize;
        let at = slot as *const PmdSlot as usize;
        let cell = at.checked_sub(base)? / core::mem::size_of::<PmdSlot>();
        (cell < self.mem.len()).then_some(((cell / ENTRIES) as u64, cell % ENTRIES))
    }

    fn lock_alloc(&self) -> std::sync::MutexGuard<'_, Bitmap> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `n` frames of `kind`, all or none. Table frames are zeroed.
    pub(crate) fn alloc_n(&self, n: usize, kind: FrameKind) -> Result<Vec<u64>, Error> {
        let got = {
            let mut bm = self.lock_alloc();
            let free = self.free.load(Ordering::Relaxed);
            if free < n {
                return Err(Error::OutOfFrames { needed: n, free });
            }
            let mut got = Vec::with_capacity(n);
            let words = bm.words.len();
            let mut w = bm.hint;
            while got.len() < n {
                let word = bm.words[w];
                if word != u64::MAX {
                    let bit = (!word).trailing_zeros() as usize;
                    bm.words[w] |= 1 << bit;
                    got.push((w * 64 + bit) as u64);
                } else {
                    w = (w + 1) % words;
                }
            }
            bm.hint = w;
            self.free.fetch_sub(n, Ordering::Relaxed);
            got
        };
        for &pfn in &got {
            self.prepare(pfn, kind);
        }
        Ok(got)
    }

    /// Allocates 512 contiguous, 512-aligned frames for a huge page.
    pub(crate) fn alloc_huge(&self) -> Result<u64, Error> {
        let start = {
            let mut bm = self.lock_alloc();
            let free = self.free.load(Ordering::Relaxed);
            let run = (0..bm.words.len() / 8).find(|&i| bm.words[i * 8..i * 8 + 8] == [0; 8]);
            let Some(i) = run else {
                return Err(Error::OutOfFrames {
                    needed: ENTRIES,
                    free,
                });
            };
            for w in &mut bm.words[i * 8..i * 8 + 8] {
                *w = u64::MAX;
            }
            self.free.fetch_sub(ENTRIES, Ordering::Relaxed);
            (i * ENTRIES) as u64
        };
        for pfn in start..start + ENTRIES as u64 {
            self.prepare(pfn, FrameKind::Data);
            if pfn != start {
                self.desc(pfn).refs.store(0, Ordering::Relaxed);
                self.desc(pfn).head_of.store(start, Ordering::Release);
            }
        }
        self.desc(start).compound.store(true, Ordering::Release);
        Ok(start)
    }

    fn prepare(&self, pfn: u64, kind: FrameKind) {
        if kind != FrameKind::Data {
            for i in 0..ENTRIES {
                self.cell(pfn, i).0.store(0, Ordering::Relaxed);
            }
        }
        // Only data pages are reference counted: a table frame can never be freed by a put.
        let refs = u32::from(kind == FrameKind::Data);
        self.desc(pfn).refs.store(refs, Ordering::Relaxed);
        self.desc(pfn).kind.store(kind as u8, Ordering::Release);
    }

    /// The folio a data frame belongs to: the head of its huge page, or itself.
    pub(crate) fn folio(&self, pfn: u64) -> u64 {
        match self.desc(pfn).head_of.load(Ordering::Acquire) {
            0 => pfn,
            head => head,
        }
    }

    /// Takes a reference to the folio of a data frame unless it has none left
    /// (`folio_try_get`). `false` for anything but a data page in use.
    pub(crate) fn try_get(&self, pfn: u64) -> bool {
        if pfn == 0 || pfn as usize >= self.nframes {
            return false;
        }
        // Table frames keep 0 references (`prepare`), so they are never referenced here.
        self.desc(self.folio(pfn))
            .refs
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |r| {
                (r > 0 && r < u32::MAX).then(|| r + 1)
            })
            .is_ok()
    }

    /// Drops a reference to the folio of a data frame; frees the folio (one frame, or all 512
    /// of a huge page) on the last. Returns `false`, and changes nothing, for a frame that is
    /// not a data page with references (a table, a free frame): a put can never free a table.
    pub(crate) fn put(&self, pfn: u64) -> bool {
        if pfn == 0 || pfn as usize >= self.nframes {
            return false;
        }
        let head = self.folio(pfn);
        let dropped = self
            .desc(head)
            .refs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
        match dropped {
            Ok(1) => {
                if self.desc(head).compound.load(Ordering::Acquire) {
                    self.free_huge(head);
                } else {
                    self.free(head);
                }
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// The reference count of the folio a frame belongs to.
    pub(crate) fn refs(&self, pfn: u64) -> u32 {
        self.desc(self.folio(pfn)).refs.load(Ordering::Relaxed)
    }

    /// Frees one frame now: new generation, poison, back to the allocator. A bogus free (frame
    /// 0, out of range, already free) changes nothing.
    pub(crate) fn free(&self, pfn: u64) {
        if pfn == 0 || pfn as usize >= self.nframes {
            return;
        }
        let d = self.desc(pfn);
        // Claim the free atomically, so that two racing frees cannot both return the frame.
        if d.kind.swap(FrameKind::Free as u8, Ordering::AcqRel) == FrameKind::Free as u8 {
            return;
        }
        d.refs.store(0, Ordering::Relaxed);
        d.compound.store(false, Ordering::Relaxed);
        d.head_of.store(0, Ordering::Relaxed);
        d.installed.store(false, Ordering::Relaxed);
        d.unlinked_at.store(0, Ordering::Relaxed);
        d.checked.store(false, Ordering::Relaxed);
        d.generation.fetch_add(1, Ordering::AcqRel);
        for i in 0..ENTRIES {
            self.cell(pfn, i).0.store(POISON, Ordering::Release);
        }
        d.deposit.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut bm = self.lock_alloc();
        bm.words[pfn as usize / 64] &= !(1 << (pfn % 64));
        self.free.fetch_add(1, Ordering::Relaxed);
    }

    /// Frees a PTE table: the references its present entries still hold go with it (an entry
    /// holds one to its page), then the frame.
    pub(crate) fn free_table(&self, pfn: u64) {
        if pfn == 0 || pfn as usize >= self.nframes || self.kind(pfn) != FrameKind::Pte {
            return;
        }
        for i in 0..ENTRIES {
            let pte = super::entry::Pte::from_raw(self.cell(pfn, i).0.load(Ordering::Acquire));
            if let Some(page) = pte.pfn().filter(|_| !pte.is_special()) {
                self.put(page);
            }
        }
        self.free(pfn);
    }

    /// Frees a huge page's 512 frames.
    pub(crate) fn free_huge(&self, start: u64) {
        for pfn in start..start + ENTRIES as u64 {
            self.free(pfn);
        }
    }
}

impl Frames {
    /// The tables deposited on slots of the PMD table at `pfn` (protected by its PMD lock; the
    /// mutex only makes the access safe Rust).
    pub(crate) fn deposits(&self, pfn: u64) -> std::sync::MutexGuard<'_, Vec<(u16, u64)>> {
        self.desc(pfn)
            .deposit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Re-labels a frame taken from a reservation made for another kind (a data page gets its
    /// one reference, a table none, as from `alloc_n`).
    pub(crate) fn set_kind(&self, pfn: u64, kind: FrameKind) {
        let refs = u32::from(kind == FrameKind::Data);
        self.desc(pfn).refs.store(refs, Ordering::Relaxed);
        self.desc(pfn).kind.store(kind as u8, Ordering::Release);
    }
}
