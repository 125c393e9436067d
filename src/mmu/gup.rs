//! GUP-fast: pinning pages with a lockless walk (case 2).
//!
//! The whole walk runs inside one RCU read section. Each pmd is a copy read inside it
//! (`CopiedUnderRcu<'g>`), so `pte_offset_map` on the copy is safe. The order that makes a pin
//! correct: read the pte, take a reference on the page, **then** recheck both the pmd against
//! its slot and the pte against its entry, and back out on any change. Removers clear first
//! and check references after; a collapse may clear the pmd while the stale PTEs stay valid in
//! the detached table, which is why the pmd recheck is needed (bug B1).

use super::audit::AuditRule;
use super::entry::{PmdKind, PmdVal, Pte};
use super::{Mmu, PAGE_SIZE, PMD_SIZE};
use crate::error::Error;
use crate::ops::{GupPin, PinStage, gup_fast_one};
use crate::provenance::{CopiedUnderRcu, PmdRef, PteMap};
use core::fmt;

/// A reference to a data page: a pin from [`Mmu::gup_fast`], a reference from
/// [`Mmu::try_get_page`], or a page from [`Mmu::alloc_data_frame`]. Dropping it puts the
/// reference (`unpin_user_page`, `folio_put`); the last put frees the page. References exist
/// only as values of this type, so safe code cannot put one it does not hold.
///
/// # Invariants
/// The value holds one reference to the folio of `page` (`folio` is that folio's head).
#[must_use = "dropping a page reference releases it at once"]
pub struct PageRef<'m> {
    mmu: &'m Mmu,
    page: u64,
    folio: u64,
}

/// A page pinned by [`Mmu::gup_fast`].
pub type PinnedPage<'m> = PageRef<'m>;

impl<'m> PageRef<'m> {
    /// Wraps a reference the caller just took (or allocated) on `page`.
    pub(crate) fn new(mmu: &'m Mmu, page: u64) -> Self {
        // INVARIANT: the caller took the reference.
        PageRef {
            mmu,
            page,
            folio: mmu.frames.folio(page),
        }
    }

    /// The referenced frame.
    pub fn pfn(&self) -> u64 {
        self.page
    }
}

impl Drop for PageRef<'_> {
    fn drop(&mut self) {
        self.mmu.frames.put(self.folio);
    }
}

impl fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageRef").field("pfn", &self.page).finish()
    }
}

/// The pmd copy GUP-fast walks through.
type Copied<'m, 'g> = PmdRef<'m, 'g, Mmu, CopiedUnderRcu<'g>>;

/// The PTE a GUP-fast pin was read through: its map, address and value.
type PteRead<'r, 'a> = Option<(&'r PteMap<'a, Mmu>, u64, Pte)>;

/// The audit's watch on one GUP-fast pin (rule I5).
///
/// The audit reads the pmd slot and the pte itself, right after the reference is taken and
/// again when the pin is kept, independently of the recheck it watches. A pin kept although
/// both reads found the mapping changed was kept without a successful recheck in between (a
/// correct recheck sits between them and would have backed out), so the audit reports it.
/// The two reads make a false report need the mapping to change, change back and change
/// again within one pin, which the MMU's operations (all slower than a pin, and none
/// restoring a freed table inside the read section the pin runs in) do not do.
struct PinAudit {
    stale_at_pin: bool,
}

impl PinAudit {
    fn stale(pmd: &Copied<'_, '_>, pte: PteRead<'_, '_>) -> bool {
        !pmd.still_installed() || pte.is_some_and(|(map, va, pte)| map.ptep_get(va) != pte)
    }

    fn at_pin(pmd: &Copied<'_, '_>, pte: PteRead<'_, '_>) -> Self {
        PinAudit {
            stale_at_pin: Self::stale(pmd, pte),
        }
    }

    fn kept(self, mmu: &Mmu, pmd: &Copied<'_, '_>, pte: PteRead<'_, '_>, page: u64) {
        if self.stale_at_pin && Self::stale(pmd, pte) {
            mmu.audit_rule(AuditRule::PinKeptStale, page, "gup_fast", "pin");
        }
    }
}

/// The MMU's half of GUP-fast ([`GupPin`]): page references on its frames, and the audit's
/// watch on each pin.
struct MmuPins<'m> {
    mmu: &'m Mmu,
    audit: Option<PinAudit>,
    /// The page of the last pin taken, for the audit's report.
    page: u64,
}

impl GupPin<Mmu> for MmuPins<'_> {
    /// The frame whose reference was taken (the folio's head for a huge pmd), and the page.
    type Pin = (u64, u64);

    fn pin_pte(&mut self, pte: &Pte, _addr: u64) -> Option<(u64, u64)> {
        let pfn = pte.pfn().filter(|_| !pte.is_special())?;
        self.page = pfn;
        self.mmu.frames.try_get(pfn).then_some((pfn, pfn))
    }

    fn pin_huge(&mut self, pmd: &PmdVal, addr: u64) -> Option<(u64, u64)> {
        let PmdKind::Huge(head) = pmd.kind() else {
            return None;
        };
        if self.mmu.is_huge_zero(head) || !self.mmu.frames.try_get(head) {
            return None;
        }
        self.page = head + ((addr & (PMD_SIZE - 1)) >> 12);
        Some((head, self.page))
    }

    fn unpin(&mut self, (held, _): (u64, u64)) {
        self.mmu.frames.put(held);
    }

    fn watch(&mut self, stage: PinStage, pmd: &Copied<'_, '_>, pte: PteRead<'_, '_>) {
        match stage {
            PinStage::Pinned => self.audit = Some(PinAudit::at_pin(pmd, pte)),
            PinStage::Kept => {
                if let Some(audit) = self.audit.take() {
                    audit.kept(self.mmu, pmd, pte, self.page);
                }
            }
        }
    }
}

impl Mmu {
    /// Pins up to `nr_pages` pages from `start` without taking any lock (`gup_fast`). Stops at
    /// the first page it cannot pin safely (not present, special, or changed under it), like
    /// the kernel, and returns the pins it took. Each page goes through the generic
    /// [`ops::gup_fast_one`](crate::ops::gup_fast_one).
    ///
    /// # Errors
    /// A bad or misaligned address.
    pub fn gup_fast(
        &self,
        start: u64,
        nr_pages: usize,
    ) -> Result<std::vec::Vec<PageRef<'_>>, Error> {
        self.check_va(start, PAGE_SIZE)?;
        // No capacity from the caller's count: it may be absurd (the walk stops at the limit).
        let mut pins = std::vec::Vec::with_capacity(nr_pages.min(super::frames::ENTRIES));
        let guard = self.rcu_read_lock();
        let mut gup = MmuPins {
            mmu: self,
            audit: None,
            page: 0,
        };
        for i in 0..nr_pages as u64 {
            let va = start + i * PAGE_SIZE;
            if self.check_va(va, PAGE_SIZE).is_err() {
                break;
            }
            let Some((_, page)) = gup_fast_one(self, &guard, va, &mut gup)? else {
                break;
            };
            pins.push(PageRef::new(self, page));
        }
        Ok(pins)
    }
}

#[cfg(test)]
mod tests {
    //! Rule I5 from both sides: a pin kept without its recheck after the mapping changed is
    //! reported, and `gup_fast` over the same change backs out and keeps the count at 0.

    use super::*;
    use crate::mmu::{MmuConfig, VmaKind};
    use crate::provenance::pte_offset_map;

    const VA: u64 = 0x20_0000;

    fn mmu() -> Mmu {
        let mmu = Mmu::new(MmuConfig {
            frames: 2048,
            va_limit: 1 << 30,
        })
        .unwrap();
        mmu.mmap(VA, 2 * PMD_SIZE, VmaKind::Anon).unwrap();
        mmu
    }

    /// Runs `change` on another thread (it may take any lock: this thread holds none).
    fn elsewhere(change: impl FnOnce() + Send) {
        std::thread::scope(|s| s.spawn(change).join().unwrap());
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2,048-frame arena is too large for Miri")]
    fn a_pte_pin_kept_after_the_table_was_retracted_is_reported() {
        let mmu = mmu();
        mmu.map_page(VA).unwrap();
        let guard = mmu.rcu_read_lock();
        let pmd = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        let map = pte_offset_map(&pmd, VA).unwrap();
        let pte = map.ptep_get(VA);
        // The table is unlinked between the pte read and the pin.
        elsewhere(|| assert_eq!(mmu.retract_pte_table(VA).unwrap(), 1));
        let audit = PinAudit::at_pin(&pmd, Some((&map, VA, pte)));
        // No recheck: the pin is kept.
        audit.kept(&mmu, &pmd, Some((&map, VA, pte)), pte.pfn().unwrap());
        assert_eq!(mmu.audit().violations_of(AuditRule::PinKeptStale), 1);
        let v = &mmu.audit().report()[0];
        assert_eq!(v.rule, AuditRule::PinKeptStale);
        assert_eq!(v.pfn, pte.pfn().unwrap());
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2,048-frame arena is too large for Miri")]
    fn a_pte_pin_kept_after_the_pte_changed_is_reported() {
        let mmu = mmu();
        mmu.map_page(VA).unwrap();
        let guard = mmu.rcu_read_lock();
        let pmd = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        let map = pte_offset_map(&pmd, VA).unwrap();
        let pte = map.ptep_get(VA);
        // The table stays; the entry is cleared (`unmap_page`).
        elsewhere(|| {
            mmu.unmap_page(VA).unwrap();
        });
        let audit = PinAudit::at_pin(&pmd, Some((&map, VA, pte)));
        audit.kept(&mmu, &pmd, Some((&map, VA, pte)), pte.pfn().unwrap());
        assert_eq!(mmu.audit().violations_of(AuditRule::PinKeptStale), 1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2,048-frame arena is too large for Miri")]
    fn a_huge_pin_kept_after_the_split_is_reported() {
        let mmu = mmu();
        let head = mmu.map_huge(VA).unwrap();
        let guard = mmu.rcu_read_lock();
        let pmd = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        assert_eq!(pmd.pmd_val().kind(), PmdKind::Huge(head));
        elsewhere(|| {
            mmu.split_huge_pmd(VA).unwrap();
        });
        let audit = PinAudit::at_pin(&pmd, None);
        audit.kept(&mmu, &pmd, None, head);
        assert_eq!(mmu.audit().violations_of(AuditRule::PinKeptStale), 1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2,048-frame arena is too large for Miri")]
    fn a_pin_of_an_unchanged_mapping_is_not_reported() {
        let mmu = mmu();
        mmu.map_page(VA).unwrap();
        let guard = mmu.rcu_read_lock();
        let pmd = mmu.pmd_copy_lockless(&guard, VA).unwrap().unwrap();
        let map = pte_offset_map(&pmd, VA).unwrap();
        let pte = map.ptep_get(VA);
        let audit = PinAudit::at_pin(&pmd, Some((&map, VA, pte)));
        audit.kept(&mmu, &pmd, Some((&map, VA, pte)), pte.pfn().unwrap());
        assert_eq!(mmu.audit().violations(), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2,048-frame arena is too large for Miri")]
    fn gup_fast_after_the_same_changes_keeps_no_stale_pin() {
        let mmu = mmu();
        mmu.map_page(VA).unwrap();
        mmu.retract_pte_table(VA).unwrap();
        assert!(mmu.gup_fast(VA, 1).unwrap().is_empty());
        mmu.map_page(VA).unwrap();
        mmu.unmap_page(VA).unwrap();
        assert!(mmu.gup_fast(VA, 1).unwrap().is_empty());
        let head = mmu.map_huge(VA + PMD_SIZE).unwrap();
        mmu.split_huge_pmd(VA + PMD_SIZE).unwrap();
        let pins = mmu.gup_fast(VA + PMD_SIZE, 1).unwrap();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].pfn(), head);
        drop(pins);
        mmu.rcu_barrier();
        assert_eq!(mmu.audit().violations(), 0);
    }
}
