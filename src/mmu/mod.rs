//! An in-memory x86-64 MMU: the default backend, and a place to test mm code on the host.
//!
//! # The model
//!
//! Physical memory is an arena of 4 KiB frames addressed by PFN (frame 0 is reserved). Page
//! tables are 4-level x86-64 (PGD → PUD → PMD → PTE) with entries in `AtomicU64`s. Each frame
//! has a descriptor with its split lock and a generation counter: the lock of a PMD table is
//! the *PMD lock* of its slots, the lock of a PTE table is that table's *PTE lock*, and both
//! live as long as the MMU, so a lock always outlives the grace period of its table.
//!
//! Stability locks are token types: [`Mmu::mmap_read_lock`] returns an [`MmapReadGuard`] whose
//! walks ([`MmapReadGuard::pmd_offset`]) yield `InTable` pmd references that borrow it.
//! Lockless walks ([`Mmu::pmd_copy_lockless`]) run inside an RCU read section of the MMU's own
//! [`EpochRcu`] domain and yield `CopiedUnderRcu<'g>` copies. Removers take the PMD lock, then
//! the PTE lock, detach the table and free it after a grace period.
//!
//! # The audit
//!
//! Every free gives the frame a new generation and fills it with poison. Every pmd read records
//! the generation of the table it names; every map, read and write through a map checks it. A
//! mismatch is a page-table use-after-free: counted and reported by [`Mmu::audit`] with the
//! frame, the generations and the operation. Through the typed API the count stays zero; the
//! `unsafe` [`pte_offset_map_unprotected`](crate::provenance::pte_offset_map_unprotected) path
//! shows that it fires.
//!
//! # Operations
//!
//! Each written only through the safe typed API (the files below hold no `unsafe`), each
//! returning a typed [`Error`] that leaves the MMU unchanged:
//!
//! - faults: [`Mmu::map_page`], [`Mmu::map_pages`], [`MmapReadGuard::pte_alloc`],
//!   [`MmapReadGuard::pmd_install`], [`Mmu::cow_fault`] (`fault.rs`);
//! - THP: [`Mmu::map_huge`], [`Mmu::map_huge_zero`], [`Mmu::split_huge_pmd`],
//!   [`Mmu::unmap_huge`] (`thp.rs`);
//! - khugepaged: [`Mmu::retract_page_tables`], [`Mmu::collapse_pte_mapped_thp`],
//!   [`Mmu::collapse_huge_page`], and the simpler [`Mmu::retract_pte_table`]
//!   (`khugepaged.rs`);
//! - GUP-fast: [`Mmu::gup_fast`] (`gup.rs`);
//! - zap and PT_RECLAIM: [`Mmu::unmap_page`], [`Mmu::madvise_dontneed`] (`zap.rs`);
//! - teardown and moves: [`Mmu::munmap`] with [`Exclusive::free_pgtables`],
//!   [`Mmu::move_normal_pmd`] (`munmap.rs`);
//! - checks: [`check::page_table_check_pte_clear_range`], [`Mmu::check_tables`] (`check.rs`);
//!   race-window delays for short test runs, [`Mmu::set_race_delays`] ([`delay`]);
//! - lookups: [`Mmu::translate`], [`Mmu::pmd_copy_lockless`], [`Mmu::dump`] (`ops.rs`).
//!
//! VMAs (`vma.rs`): [`Mmu::mmap`], [`Mmu::find_vma`]. The upper levels of a walk, down to the
//! pmd slot (`walk.rs`). The locks, one file each under `locks/`, whose module docs hold the
//! table of what each excludes and allows: the mmap lock [`Mmu::mmap_read_lock`] (`mmap.rs`),
//! the per-VMA lock [`Mmu::lock_vma_under_rcu`] and [`MmapWriteGuard::vma_start_write`]
//! (`vma.rs`), the rmap lock [`Mmu::i_mmap_lock_read`] (`rmap.rs`), the exclusive token
//! [`MmapWriteGuard::detach_range`] (`exclusive.rs`) and the split-lock spinlock (`spin.rs`).
//! The crate's [`kernel_map`](crate::kernel_map) table maps each kernel function to these
//! calls.
//!
//! One rule for callers: never take a sleeping lock (the mmap, VMA or rmap lock) inside an RCU
//! read section, and never call an operation that waits for a grace period
//! ([`Mmu::collapse_huge_page`], [`Mmu::rcu_barrier`]) inside one: the grace period would wait
//! for the section, as in the kernel.
//!
//! # The lock checker
//!
//! That rule, recursive locking and the lock order (I10) are checked before every blocking
//! lock call, lockdep-style ([`lockdep`]): an operation that would deadlock returns
//! [`Error::LockViolation`] naming the rule and both sites, a bare lock call panics with the
//! same report, and an MMU dropped with a read section leaked reports it instead of waiting
//! forever. On by default (feature `lock-checker`).

mod audit;
mod backend;
pub mod check;
pub mod delay;
mod entry;
mod fault;
mod frames;
mod gup;
mod khugepaged;
pub mod lockdep;
mod locks;
mod munmap;
mod ops;
mod thp;
mod vma;
mod walk;
mod zap;

pub use audit::{Audit, AuditRule, Violation};
pub use entry::{
    ACCESSED, ADDR_MASK, DIRTY, HUGE, MIGRATION_TYPE, POISON, PRESENT, PmdKind, PmdVal, Pte,
    RESERVED, RW, TableRef, USER, classify_pmd, huge_entry, migration_entry, table_entry,
};
pub use frames::{ENTRIES, FrameKind, PmdSlot};
pub use gup::{PageRef, PinnedPage};
pub use khugepaged::CollapseOutcome;
pub use locks::{
    Exclusive, MmapReadGuard, MmapWriteGuard, RmapReadGuard, RmapWriteGuard, VmaReadGuard,
    VmaWriteGuard,
};
pub use ops::{MmuDump, MmuStats};
pub use thp::SplitOutcome;
pub use vma::{VmaInfo, VmaKind};
pub use zap::ZapStats;

use crate::error::Error;
use crate::rcu::{EpochRcu, RcuDomain, RcuGuard};
use frames::Frames;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::vec::Vec;

/// Size of a base page.
pub const PAGE_SIZE: u64 = 1 << 12;
/// Size of the range one PTE table (one pmd) covers.
pub const PMD_SIZE: u64 = 1 << 21;
/// One past the highest canonical lower-half address of 4-level paging.
pub const VA_LIMIT_MAX: u64 = 1 << 47;

/// How to build an [`Mmu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmuConfig {
    /// Number of 4 KiB frames of physical memory (at least 16, at most 2^26).
    pub frames: usize,
    /// One past the highest usable virtual address (a multiple of 2 MiB, at most 2^47).
    pub va_limit: u64,
}

impl Default for MmuConfig {
    /// 16,384 frames (64 MiB) and the whole lower half of the 48-bit space.
    fn default() -> Self {
        MmuConfig {
            frames: 16 * 1024,
            va_limit: VA_LIMIT_MAX,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tables_installed: AtomicU64,
    pub(crate) tables_freed_now: AtomicU64,
    pub(crate) tables_freed_deferred: AtomicU64,
    pub(crate) retracts: AtomicU64,
    pub(crate) anon_pages_lost: AtomicU64,
    pub(crate) splits: AtomicU64,
    pub(crate) collapses: AtomicU64,
    pub(crate) reclaims: AtomicU64,
    pub(crate) pgtables_freed: AtomicU64,
    pub(crate) pmd_moves: AtomicU64,
}

/// The in-memory MMU.
///
/// ```
/// use typed_pgtable::mmu::{Mmu, MmuConfig};
///
/// let mmu = Mmu::new(MmuConfig { frames: 1024, va_limit: 1 << 30 })?;
/// let pfn = mmu.map_page(0x1234_5000)?;
/// assert_eq!(mmu.translate(0x1234_5678)?, Some((pfn << 12) | 0x678));
/// assert!(mmu.map_page(0x1234_5000).is_err()); // already mapped
/// mmu.unmap_page(0x1234_5000)?;
/// assert_eq!(mmu.translate(0x1234_5678)?, None);
/// # Ok::<(), typed_pgtable::Error>(())
/// ```
///
/// # Invariants
/// `root` is the PGD frame, allocated at creation and never freed. Upper-level tables (PUD,
/// PMD) are installed under `page_table_lock` and never freed while the MMU lives; PTE tables
/// are installed under the PMD lock and removed under the PMD and PTE locks.
pub struct Mmu {
    pub(crate) frames: Arc<Frames>,
    pub(crate) rcu: EpochRcu,
    pub(crate) root: u64,
    pub(crate) cfg: MmuConfig,
    pub(crate) mmap_lock: RwLock<()>,
    pub(crate) page_table_lock: Mutex<()>,
    pub(crate) counters: Counters,
    pub(crate) vmas: RwLock<Vec<Arc<vma::Vma>>>,
    pub(crate) i_mmap: RwLock<()>,
    pub(crate) zero_page: Mutex<Option<u64>>,
    pub(crate) huge_zero: AtomicU64,
    pub(crate) huge_zero_init: Mutex<()>,
    pub(crate) race_delays: core::sync::atomic::AtomicU32,
}

impl Mmu {
    /// Builds an MMU with empty page tables.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unusable size or limit.
    pub fn new(cfg: MmuConfig) -> Result<Mmu, Error> {
        if cfg.frames < 16 {
            return Err(Error::InvalidConfig {
                reason: "at least 16 frames are needed",
            });
        }
        if cfg.frames > 1 << 26 {
            return Err(Error::InvalidConfig {
                reason: "at most 2^26 frames (256 GiB) are supported",
            });
        }
        if cfg.va_limit == 0 || cfg.va_limit % PMD_SIZE != 0 || cfg.va_limit > VA_LIMIT_MAX {
            return Err(Error::InvalidConfig {
                reason: "va_limit must be a non-zero multiple of 2 MiB, at most 2^47",
            });
        }
        let frames = Arc::new(Frames::new(cfg.frames).ok_or(Error::InvalidConfig {
            reason: "the memory for that many frames cannot be allocated",
        })?);
        let root = frames.alloc_n(1, FrameKind::Pgd)?[0];
        Ok(Mmu {
            frames,
            rcu: EpochRcu::new(),
            root,
            cfg,
            mmap_lock: RwLock::new(()),
            page_table_lock: Mutex::new(()),
            counters: Counters::default(),
            vmas: RwLock::new(Vec::new()),
            i_mmap: RwLock::new(()),
            zero_page: Mutex::new(None),
            huge_zero: AtomicU64::new(0),
            huge_zero_init: Mutex::new(()),
            race_delays: core::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> MmuConfig {
        self.cfg
    }

    /// The RCU domain that protects this MMU's page tables.
    pub fn rcu(&self) -> &EpochRcu {
        &self.rcu
    }

    /// Opens a read section of this MMU's RCU domain (`rcu_read_lock`).
    #[track_caller]
    pub fn rcu_read_lock(&self) -> RcuGuard<'_, EpochRcu> {
        self.rcu.read_lock()
    }

    /// Waits until every deferred free queued so far has run (`rcu_barrier`).
    ///
    /// # Panics
    /// Inside a read section of this MMU (the lock checker's report: the wait would never end).
    #[track_caller]
    pub fn rcu_barrier(&self) {
        self.rcu.rcu_barrier()
    }

    /// The use-after-free audit.
    pub fn audit(&self) -> &Audit {
        &self.frames.audit
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.frames.free_count()
    }

    /// What a frame is used for, or `None` for a PFN outside physical memory.
    pub fn frame_kind(&self, pfn: u64) -> Option<FrameKind> {
        (pfn < self.frames.nframes() as u64).then(|| self.frames.kind(pfn))
    }

    /// The zero page (mapped by zero-page PTEs after a huge zero page split), allocated on
    /// first use and kept, with its one reference, for the MMU's life.
    ///
    /// # Errors
    /// [`Error::OutOfFrames`] on first use.
    pub fn zero_pfn(&self) -> Result<u64, Error> {
        let mut z = self.zero_page.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pfn) = *z {
            return Ok(pfn);
        }
        let pfn = self.frames.alloc_n(1, FrameKind::Data)?[0];
        *z = Some(pfn);
        Ok(pfn)
    }

    /// The zero page, if it has been allocated (never allocates).
    pub fn zero_page(&self) -> Option<u64> {
        *self.zero_page.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back a zero page allocated by a call that then failed.
    pub(crate) fn drop_zero_page(&self, pfn: u64) {
        let mut z = self.zero_page.lock().unwrap_or_else(|e| e.into_inner());
        if *z == Some(pfn) {
            *z = None;
            self.frames.free(pfn);
        }
    }

    /// Allocates a data frame (for callers that build tables by hand), with its one
    /// reference: a PTE that maps it takes its own, and dropping the [`PageRef`] frees the
    /// page once no entry maps it.
    ///
    /// # Errors
    /// [`Error::OutOfFrames`].
    pub fn alloc_data_frame(&self) -> Result<PageRef<'_>, Error> {
        let pfn = self.frames.alloc_n(1, FrameKind::Data)?[0];
        Ok(PageRef::new(self, pfn))
    }
}

impl Drop for Mmu {
    /// Lets the deferred frees run (they hold the frames through an `Arc`, so this is about
    /// prompt accounting, not safety). A read section of this MMU that is still open can only
    /// be one leaked with `mem::forget` (a live one borrows the MMU): the drop reports it on
    /// standard error and leaks the memory its grace period would have freed, instead of
    /// waiting for it forever.
    fn drop(&mut self) {
        if let Some(at) = self.rcu.section_open_here() {
            lockdep::report_leaked_section(&std::format!("opened at {at}, on the dropping thread"));
            return;
        }
        if !self
            .rcu
            .rcu_barrier_timeout(std::time::Duration::from_secs(10))
        {
            lockdep::report_leaked_section(
                "on another thread (the grace period did not end in 10 s)",
            );
        }
    }
}

impl core::fmt::Debug for Mmu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mmu")
            .field("config", &self.cfg)
            .field("free_frames", &self.free_frames())
            .field("violations", &self.audit().violations())
            .finish()
    }
}
