//! Detaching a PTE table under both locks, and retracting it.

use crate::provenance::{
    Attached, DetachedPmd, InTable, PgtableBackend, PgtableError, PmdRef, PteLocked, Retired,
    WalkLock, pmd_lock, pmdp_collapse_flush, pte_offset_map_lock,
};

/// Detaches the PTE table of `pmd` (the core of `retract_page_tables`): take the PMD lock,
/// check the slot names a table, map and lock it (`pte_offset_map_lock`, whose `pmd_same`
/// recheck proves it still installed), ask `still_ok` under both locks (e.g. "the VMA still
/// has no `anon_vma`", B4), and clear the slot with `pmdp_collapse_flush`. The table is
/// [`Retired`]: lockless walkers may still be inside it, so its only free is
/// [`DetachedPmd::pte_free_defer`].
///
/// # Errors
/// [`PgtableError::NoTable`] if the slot names no table (with the nomap reason),
/// [`PgtableError::PmdChanged`] if `still_ok` refused.
pub fn detach_pte_table<'m, B: PgtableBackend>(
    pmd: &PmdRef<'m, '_, B, InTable>,
    addr: u64,
    still_ok: impl FnOnce(&PteLocked<'_, B, Attached>) -> bool,
) -> Result<DetachedPmd<'m, B, Retired>, B::Error> {
    let backend = pmd.backend();
    let pml = pmd_lock(pmd);
    backend
        .pmd_table(&pml.pmdp_get())
        .map_err(PgtableError::NoTable)?;
    let ptl = pte_offset_map_lock(pmd, addr).map_err(PgtableError::NoTable)?;
    if !still_ok(&ptl) {
        return Err(PgtableError::PmdChanged.into());
    }
    pmdp_collapse_flush(&pml, ptl).map_err(|r| r.error)
}

/// Retracts the PTE table covering `addr` under `lock` (`retract_page_tables` for one slot):
/// walk, [`detach_pte_table`], then `before_free` on the detached table (accounting,
/// `page_table_check`) and `pte_free_defer`. Returns what `before_free` returned, or `None` if
/// the upper levels do not exist.
///
/// # Errors
/// The walk's error; then as [`detach_pte_table`].
pub fn retract_pte_table<'m, B, L, R>(
    lock: &L,
    addr: u64,
    still_ok: impl FnOnce(&PteLocked<'_, B, Attached>) -> bool,
    before_free: impl FnOnce(&DetachedPmd<'m, B, Retired>) -> R,
) -> Result<Option<R>, B::Error>
where
    B: PgtableBackend + 'm,
    L: WalkLock<'m, B, Error = B::Error>,
{
    let Some(pmd) = lock.pmd_offset(addr)? else {
        return Ok(None);
    };
    let table = detach_pte_table(&pmd, addr, still_ok)?;
    let r = before_free(&table);
    table.pte_free_defer();
    Ok(Some(r))
}
