//! Filling a fresh PTE table through the owner's map, and installing it.

use crate::error::Rejected;
use crate::provenance::{DetachedPmd, Fresh, InstallLock, PgtableBackend, PmdLockGuard};

/// Writes `entries` into the fresh table, entry 0 first, through its owner's map (a split's
/// PTE loop: no lock, no walker can see the table yet). On a refused entry the entries written
/// so far are cleared again, so the table is as it was, and the backend's error is returned.
///
/// # Errors
/// The backend's refusal of an entry ([`PgtableBackend::set_pte`]).
pub fn fill_pte_table<B: PgtableBackend>(
    table: &mut DetachedPmd<'_, B, Fresh>,
    addr: u64,
    entries: impl IntoIterator<Item = B::Pte>,
) -> Result<(), B::Error> {
    let map = table.pte_offset_map_mut(addr);
    for (i, pte) in entries.into_iter().enumerate() {
        if let Err(e) = map.set_pte_index(i, pte) {
            for j in 0..i {
                map.ptep_get_and_clear_index(j);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Fills a fresh table with `entries` and installs it in `pml`'s slot under `mm` (rule I7):
/// the writes happen before the publication, which `pmd_populate` orders (rule I7, the
/// Release store).
///
/// # Errors
/// Hands the table back (unchanged on a refused entry, filled if the install was refused)
/// with the backend's error.
pub fn populate_filled<'m, B: PgtableBackend, L: InstallLock<B>>(
    mut table: DetachedPmd<'m, B, Fresh>,
    mm: &L,
    pml: &PmdLockGuard<'_, '_, B>,
    addr: u64,
    entries: impl IntoIterator<Item = B::Pte>,
) -> Result<(), Rejected<DetachedPmd<'m, B, Fresh>, B::Error>> {
    if let Err(error) = fill_pte_table(&mut table, addr, entries) {
        return Err(Rejected {
            error,
            value: table,
        });
    }
    table.pmd_populate(mm, pml)
}
