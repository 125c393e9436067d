//! The page-table use-after-free audit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

/// One detected page-table use-after-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The frame that was accessed.
    pub pfn: u64,
    /// The generation the map expected (the frame's generation when the pmd was read).
    pub expected_gen: u32,
    /// The generation the frame had at the access: it was freed (and maybe reused) since.
    pub found_gen: u32,
    /// The operation that made the map (`pte_offset_map`, …) and the access (`map`, `read`,
    /// `write`).
    pub op: &'static str,
    /// The access.
    pub access: &'static str,
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "page-table use-after-free: {} of frame {:#x} through {} expected generation {}, found {}",
            self.access, self.pfn, self.op, self.expected_gen, self.found_gen
        )
    }
}

const KEEP: usize = 64;

/// Counts and records page-table use-after-free.
///
/// Every frame free bumps the frame's generation and fills it with
/// [`POISON`](super::entry::POISON). Every pmd read records the generation of the table it
/// names; every map, PTE read and PTE write through a map compares it with the frame's current
/// generation, *after* the access. A mismatch means the table was freed while the map could
/// still use it. The first 64 violations are kept in full; all are counted.
#[derive(Debug, Default)]
pub struct Audit {
    count: AtomicU64,
    checks: AtomicU64,
    log: Mutex<Vec<Violation>>,
}

impl Audit {
    pub(crate) fn check(
        &self,
        pfn: u64,
        expected: u32,
        found: u32,
        op: &'static str,
        access: &'static str,
    ) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if expected != found {
            self.count.fetch_add(1, Ordering::Relaxed);
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() < KEEP {
                log.push(Violation {
                    pfn,
                    expected_gen: expected,
                    found_gen: found,
                    op,
                    access,
                });
            }
        }
    }

    /// Violations counted so far.
    pub fn violations(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Accesses checked so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The first violations, in full.
    pub fn report(&self) -> Vec<Violation> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
