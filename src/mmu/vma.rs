//! VMAs: the ranges of the address space, what backs them, and their `anon_vma`. The locks
//! that keep them stable (the per-VMA lock, the rmap lock, the exclusive token of
//! `free_pgtables`) are in [`super::locks`].

use super::locks::RwSpin;
use super::{Mmu, PAGE_SIZE};
use crate::error::Error;
use core::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What backs a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmaKind {
    /// Anonymous memory.
    Anon,
    /// A (private) file mapping: reachable through the rmap lock; gets an `anon_vma` when a
    /// write fault copies a page.
    File,
}

/// A snapshot of a VMA's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmaInfo {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// What backs it.
    pub kind: VmaKind,
    /// Whether it has an `anon_vma` (anonymous pages may be mapped in it).
    pub anon_vma: bool,
}

/// A VMA.
#[derive(Debug)]
pub(crate) struct Vma {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) kind: VmaKind,
    pub(crate) lock: RwSpin,
    pub(crate) anon_vma: AtomicBool,
    pub(crate) detached: AtomicBool,
}

impl Vma {
    pub(crate) fn info(&self) -> VmaInfo {
        VmaInfo {
            start: self.start,
            end: self.end,
            kind: self.kind,
            anon_vma: self.anon_vma.load(Ordering::Acquire),
        }
    }
    pub(crate) fn contains(&self, va: u64) -> bool {
        self.start <= va && va < self.end
    }

    /// The VMA's identity for the lock checker.
    pub(crate) fn id(&self) -> u64 {
        self as *const Vma as u64
    }
}

impl Mmu {
    pub(crate) fn vma_at(&self, va: u64) -> Option<Arc<Vma>> {
        let vmas = self.vmas.read().unwrap_or_else(|e| e.into_inner());
        vmas.iter().find(|v| v.contains(va)).cloned()
    }

    /// The VMA containing `va`, if any.
    pub fn find_vma(&self, va: u64) -> Option<VmaInfo> {
        self.vma_at(va).map(|v| v.info())
    }

    /// Creates a VMA over `[start, start + len)` (`mmap` with `MAP_FIXED_NOREPLACE`).
    ///
    /// # Errors
    /// A bad or misaligned range, or [`Error::AlreadyMapped`] if it overlaps a VMA.
    #[track_caller]
    pub fn mmap(&self, start: u64, len: u64, kind: VmaKind) -> Result<(), Error> {
        let end = self.check_range(start, len)?;
        let _mm = self.mmap_write_lock_at(Location::caller())?;
        let mut vmas = self.vmas.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vmas.iter().find(|v| v.start < end && start < v.end) {
            return Err(Error::AlreadyMapped {
                addr: v.start.max(start),
            });
        }
        vmas.push(Arc::new(Vma {
            start,
            end,
            kind,
            lock: RwSpin::default(),
            anon_vma: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        }));
        vmas.sort_by_key(|v| v.start);
        Ok(())
    }

    pub(crate) fn check_range(&self, start: u64, len: u64) -> Result<u64, Error> {
        self.check_va(start, PAGE_SIZE)?;
        if len == 0 {
            return Err(Error::EmptyRange { addr: start });
        }
        if len % PAGE_SIZE != 0 {
            return Err(Error::Misaligned {
                addr: len,
                align: PAGE_SIZE,
            });
        }
        let end = start.checked_add(len).ok_or(Error::OutOfRange {
            addr: start,
            limit: self.cfg.va_limit,
        })?;
        if end > self.cfg.va_limit {
            return Err(Error::OutOfRange {
                addr: end - 1,
                limit: self.cfg.va_limit,
            });
        }
        Ok(end)
    }

    /// Prepares the `anon_vma` of the VMA containing `va` (`anon_vma_prepare`), as the first
    /// write fault that copies a page of a private file mapping does. Under the mmap read lock
    /// and the page-table lock, like the kernel.
    pub(crate) fn anon_vma_prepare(&self, vma: &Vma) {
        if !vma.anon_vma.load(Ordering::Acquire) {
            let _ptl = self
                .page_table_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            vma.anon_vma.store(true, Ordering::Release);
        }
    }
}
