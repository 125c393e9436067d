//! Walk locks that allow installing PTE tables (rule I7).
//!
//! Every walk lock keeps the upper levels stable, but only some allow *populating* an empty
//! slot: the kernel installs PTE tables from the fault path, under the mmap lock or the VMA
//! lock, never from a context that holds only the rmap lock (khugepaged's
//! `retract_page_tables`) or the exclusivity of `free_pgtables` (which is about to free the
//! range). [`DetachedPmd::pmd_populate`](super::DetachedPmd::pmd_populate) therefore takes,
//! besides the PMD lock, the walk lock that allows the install, bounded by [`InstallLock`]:
//! with the rmap lock alone the call does not compile.

use super::backend::PgtableBackend;
use crate::error::Error;

/// A walk lock under which PTE tables may be installed (the mmap lock, a VMA lock).
///
/// # Safety
/// [`allows_install`](Self::allows_install) returns `Ok` only if `backend` is the backend this
/// lock belongs to and, while the lock is held, no remover that works by exclusivity
/// ([`ExclusiveAccess`](super::ExclusiveAccess)) covers `slot`: an install it did not expect
/// would be freed, or stranded, behind its back.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not allow installing a PTE table (rule I7)",
    label = "this lock allows walking and removing, not populating",
    note = "a table is populated only from a context holding the mmap lock or a VMA lock (the fault path): pass an `MmapReadGuard`, an `MmapWriteGuard` or a VMA guard",
    note = "the rmap lock alone (`i_mmap_lock_read`) lets khugepaged walk and retract, never install"
)]
pub unsafe trait InstallLock<B: PgtableBackend> {
    /// Whether this lock allows installing a table in `slot` of `backend`.
    ///
    /// # Errors
    /// [`Error::WrongMmu`] for a slot or backend this lock does not belong to,
    /// [`Error::SlotNotCovered`] for a slot outside what it covers (another VMA's).
    fn allows_install(&self, backend: &B, slot: &B::PmdSlot) -> Result<(), Error>;
}
