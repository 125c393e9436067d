//! The audit: page-table use-after-free, and the protocol rules the types cannot see.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

/// The rule an audit violation breaks (the numbering of the kernel protocol, I1–I11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditRule {
    /// I1/I9: a table (or its lock) used after it was freed, or a frame mapped as a table
    /// that is none.
    UseAfterFree,
    /// I2: a write through a lock that proved attachment, into a table that is no longer
    /// installed.
    WriteDetached,
    /// I5: a GUP-fast pin kept although the pmd or the pte it was read through changed
    /// between the read and the pin (the recheck after the pin was skipped).
    PinKeptStale,
    /// I7: a table installed in a slot without that slot's PMD lock.
    PopulateWithoutLock,
    /// I7: a write through the owner's map into a table that is already published.
    WriteAfterPublish,
    /// I8: a slot that names a table cleared without its PMD lock and the table's PTE lock,
    /// and without exclusivity.
    ClearWithoutLocks,
    /// I9: a table freed at once although lockless walkers may still hold it (no grace period
    /// since it was unlinked).
    FreeWithoutGrace,
    /// I11: a table that still maps pages freed without `page_table_check_pte_clear_range`
    /// since it was unlinked (the pages it maps go unaccounted).
    UncheckedRemoval,
}

impl AuditRule {
    /// Every rule, in order.
    pub const ALL: [AuditRule; 8] = [
        AuditRule::UseAfterFree,
        AuditRule::WriteDetached,
        AuditRule::PinKeptStale,
        AuditRule::PopulateWithoutLock,
        AuditRule::WriteAfterPublish,
        AuditRule::ClearWithoutLocks,
        AuditRule::FreeWithoutGrace,
        AuditRule::UncheckedRemoval,
    ];

    /// The rule, as a report names it.
    pub fn name(self) -> &'static str {
        match self {
            AuditRule::UseAfterFree => "I1/I9 use-after-free",
            AuditRule::WriteDetached => "I2 write into a detached table",
            AuditRule::PinKeptStale => "I5 GUP-fast pin kept after a change",
            AuditRule::PopulateWithoutLock => "I7 table installed without the PMD lock",
            AuditRule::WriteAfterPublish => "I7 owner's write after publication",
            AuditRule::ClearWithoutLocks => "I8 clear without both locks",
            AuditRule::FreeWithoutGrace => "I9 immediate free of a walkable table",
            AuditRule::UncheckedRemoval => "I11 removal without page_table_check",
        }
    }
}

/// One detected violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The rule broken.
    pub rule: AuditRule,
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
            "{}: {} of frame {:#x} through {} expected generation {}, found {}",
            self.rule.name(),
            self.access,
            self.pfn,
            self.op,
            self.expected_gen,
            self.found_gen
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
    per_rule: [AtomicU64; AuditRule::ALL.len()],
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
            self.record(Violation {
                rule: AuditRule::UseAfterFree,
                pfn,
                expected_gen: expected,
                found_gen: found,
                op,
                access,
            });
        }
    }

    /// Records a violation.
    pub(crate) fn record(&self, v: Violation) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let i = AuditRule::ALL
            .iter()
            .position(|r| *r == v.rule)
            .unwrap_or(0);
        self.per_rule[i].fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < KEEP {
            log.push(v);
        }
    }

    /// Violations of one rule counted so far.
    pub fn violations_of(&self, rule: AuditRule) -> u64 {
        let i = AuditRule::ALL.iter().position(|r| *r == rule).unwrap_or(0);
        self.per_rule[i].load(Ordering::Relaxed)
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
