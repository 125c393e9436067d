//! GUP-fast of one page: the lockless walk with its two rechecks.

use crate::error::NoMap;
use crate::provenance::{
    CopiedUnderRcu, LocklessWalk, PgtableBackend, PmdRef, PteMap, pte_offset_map,
};
use crate::rcu::RcuGuard;

/// The pmd copy GUP-fast walks through.
pub type GupPmd<'g, B> = PmdRef<'g, 'g, B, CopiedUnderRcu<'g>>;

/// Where a pin stands, for [`GupPin::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinStage {
    /// The reference was just taken; the recheck comes next.
    Pinned,
    /// The recheck succeeded; the pin is kept.
    Kept,
}

/// What GUP-fast does with a page: the caller's half of [`gup_fast_one`].
pub trait GupPin<B: PgtableBackend> {
    /// A pin (a page reference).
    type Pin;

    /// Takes a reference on the page `pte` maps at `addr` (`try_grab_folio_fast`), or `None`
    /// if the entry maps nothing that may be pinned (not present, special, refused).
    fn pin_pte(&mut self, pte: &B::Pte, addr: u64) -> Option<Self::Pin>;

    /// The same for a huge pmd leaf (`gup_fast_pmd_leaf`). The default pins nothing, for a
    /// backend without huge pmds.
    fn pin_huge(&mut self, pmd: &B::PmdSnapshot, addr: u64) -> Option<Self::Pin> {
        let _ = (pmd, addr);
        None
    }

    /// Drops a pin whose recheck failed (the mapping changed under it).
    fn unpin(&mut self, pin: Self::Pin);

    /// Called right after the pin and again once it is kept, with what the walk read: a hook
    /// for an audit. The default does nothing.
    fn watch(
        &mut self,
        stage: PinStage,
        pmd: &GupPmd<'_, B>,
        pte: Option<(&PteMap<'_, B>, u64, B::Pte)>,
    ) {
        let _ = (stage, pmd, pte);
    }
}

/// Pins the page at `addr` without any lock, inside `guard`'s read section (GUP-fast).
///
/// The order that makes a pin correct: copy the pmd inside the section, read the pte through
/// the copy, take the reference, **then** recheck the pmd against its slot (a collapse may
/// have detached the table while its entries stay valid: bug B1) and the pte against its
/// entry, and back out on any change. A huge leaf is pinned the same way, with the pmd
/// recheck alone. `Ok(None)` when nothing can be pinned safely; the caller stops there, as the
/// kernel does.
///
/// # Errors
/// The backend's error for a guard of another RCU domain.
pub fn gup_fast_one<'g, B: LocklessWalk, G: GupPin<B>>(
    backend: &'g B,
    guard: &'g RcuGuard<'_, B::Rcu>,
    addr: u64,
    pins: &mut G,
) -> Result<Option<G::Pin>, B::Error> {
    let Some(pmd) = backend.pmd_copy_lockless(guard, addr)? else {
        return Ok(None);
    };
    Ok(match backend.pmd_table(&pmd.pmd_val()) {
        Ok(_) => pin_through_table(&pmd, addr, pins),
        Err(NoMap::Huge) => pin_huge_leaf(&pmd, addr, pins),
        Err(_) => None,
    })
}

fn pin_through_table<B: LocklessWalk, G: GupPin<B>>(
    pmd: &GupPmd<'_, B>,
    va: u64,
    pins: &mut G,
) -> Option<G::Pin> {
    let map = pte_offset_map(pmd, va).ok()?;
    let pte = map.ptep_get(va);
    let pin = pins.pin_pte(&pte, va)?;
    pins.watch(PinStage::Pinned, pmd, Some((&map, va, pte)));
    // The recheck: pmd against its slot (B1), pte against its entry.
    if !pmd.still_installed() || map.ptep_get(va) != pte {
        pins.unpin(pin);
        return None;
    }
    pins.watch(PinStage::Kept, pmd, Some((&map, va, pte)));
    Some(pin)
}

fn pin_huge_leaf<B: LocklessWalk, G: GupPin<B>>(
    pmd: &GupPmd<'_, B>,
    va: u64,
    pins: &mut G,
) -> Option<G::Pin> {
    let pin = pins.pin_huge(&pmd.pmd_val(), va)?;
    pins.watch(PinStage::Pinned, pmd, None);
    // gup_fast_pmd_leaf: reference the folio, then recheck the pmd.
    if !pmd.still_installed() {
        pins.unpin(pin);
        return None;
    }
    pins.watch(PinStage::Kept, pmd, None);
    Some(pin)
}
