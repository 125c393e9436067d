//! The provenance markers and the sealed traits that bound the map functions.

use super::backend::{MapKind, PgtableBackend};
use crate::bound::RcuBound;
use core::fmt;
use core::marker::PhantomData;

pub(crate) mod sealed {
    pub trait Sealed {}
    pub trait SealedAccess {}
    pub trait SealedState {}
}

/// Defines zero-sized state markers that only this crate can build, each implementing the
/// private `$seal` and the public trait `$tr` it seals (the `x86_64` crate's sealed-marker
/// pattern, written once for every state family below).
macro_rules! sealed_markers {
    ($seal:path => $tr:ident: $($(#[$doc:meta])* $name:ident,)+) => {
        $(
            $(#[$doc])*
            ///
            /// Zero-sized; cannot be built outside this crate.
            #[derive(Debug)]
            pub struct $name {
                _priv: (),
            }
            impl $seal for $name {}
            impl $tr for $name {}
        )+
    };
}

/// Provenance of a pmd slot that lives inside a page table reached under a walk lock (case 3).
///
/// `pte_offset_map` opens its own RCU read section *before* it reads the slot, so the table it
/// finds cannot be freed while the map lives. A `PmdRef<'_, 'a, _, InTable>` borrows the walk-lock
/// token for `'a` (an mmap read guard, for instance) and cannot outlive it.
///
/// Zero-sized; cannot be built outside this crate.
#[derive(Debug, Clone, Copy)]
pub struct InTable {
    _priv: (),
}

/// Provenance of a pmd value naming a table its holder detached or withdrew (case 1).
///
/// The holder owns the table, so nobody else frees it. A `PmdRef<'_, '_, _, Detached>` borrows the
/// [`DetachedPmd`](super::DetachedPmd) that owns the table.
///
/// Zero-sized; cannot be built outside this crate.
#[derive(Debug, Clone, Copy)]
pub struct Detached {
    _priv: (),
}

/// Provenance of a pmd value copied out of a table inside an RCU read section `'g` that is still
/// open (case 2).
///
/// The section began before the copy was read, so no grace period that could free the table
/// can end before `'g` does. Covariant in `'g` (shrinking "valid while the guard lives" is
/// sound) and `!Send`, like crossbeam-epoch's `Shared<'g, T>`.
///
/// Zero-sized; cannot be built outside this crate.
#[derive(Debug, Clone, Copy)]
pub struct CopiedUnderRcu<'g> {
    _section: PhantomData<&'g ()>,
    _not_send: RcuBound,
}

/// Provenance of a pmd value with **no** proof: read after its guard ended, built from raw bits,
/// kept for printing. `pte_offset_map` on it does not compile; only the `unsafe`
/// [`pte_offset_map_unprotected`](super::pte_offset_map_unprotected) accepts it.
///
/// Zero-sized; cannot be built outside this crate.
#[derive(Debug, Clone, Copy)]
pub struct Unprotected {
    _priv: (),
}

/// Where a pmd reference came from. Sealed: implemented only by [`InTable`], [`Detached`],
/// [`CopiedUnderRcu`] and [`Unprotected`].
pub trait Provenance: sealed::Sealed + Sized {
    /// What a reference of this provenance stores: a slot pointer for `InTable`, a value (and
    /// the slot it came from) for copies, a value for the rest.
    #[doc(hidden)]
    type Source<'a, B: PgtableBackend + 'a>: Copy;

    /// Reads the pmd value once. For `InTable` this reads the live slot; call it only after the
    /// RCU section that protects the result is open.
    #[doc(hidden)]
    fn read<'a, B: PgtableBackend + 'a>(backend: &B, src: &Self::Source<'a, B>) -> B::PmdSnapshot;

    /// The live slot that `pte_offset_map_lock` rechecks with `pmd_same`, if this provenance
    /// has one whose recheck proves attachment.
    #[doc(hidden)]
    fn recheck_slot<'a, B: PgtableBackend + 'a>(
        src: &Self::Source<'a, B>,
    ) -> Option<&'a B::PmdSlot>;
}

/// A provenance that proves the PTE table cannot be freed while it is mapped.
///
/// Implemented for exactly the three proofs: [`InTable`], [`CopiedUnderRcu<'g>`] and
/// [`Detached`]. `pte_offset_map` and `pte_offset_map_lock` are bounded by it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not prove that the PTE table behind this pmd is protected",
    label = "this pmd has provenance `{Self}`, which carries no protection proof",
    note = "a pmd can be mapped only with one of three proofs:",
    note = "  `InTable`: walk to the slot under a walk lock (e.g. `MmapReadGuard::pmd_offset`)",
    note = "  `CopiedUnderRcu<'g>`: copy the pmd inside an RCU read section that is still open (`pmdp_get_lockless(&pmd, &guard)`)",
    note = "  `Detached`: own the table you detached or withdrew (`DetachedPmd::pmd`)"
)]
pub trait ProvesProtection: Provenance {
    /// The state `pte_offset_map_lock` returns for this provenance: `Attached` for `InTable`
    /// (rechecked against the live slot), `Unverified` for copies (a copy compared with itself
    /// proves nothing), `Owned` for detached tables.
    type LockAccess: Access;

    /// What a backend is told the lock's map is: a lock of a table in a slot, or of a table
    /// its holder owns (so that an audit can check attachment against the right rule).
    #[doc(hidden)]
    const LOCK_KIND: MapKind;
}

impl sealed::Sealed for InTable {}
impl sealed::Sealed for Detached {}
impl sealed::Sealed for CopiedUnderRcu<'_> {}
impl sealed::Sealed for Unprotected {}

impl Provenance for InTable {
    type Source<'a, B: PgtableBackend + 'a> = &'a B::PmdSlot;
    fn read<'a, B: PgtableBackend + 'a>(backend: &B, src: &&'a B::PmdSlot) -> B::PmdSnapshot {
        backend.pmdp_get_lockless(src)
    }
    fn recheck_slot<'a, B: PgtableBackend + 'a>(src: &&'a B::PmdSlot) -> Option<&'a B::PmdSlot> {
        Some(*src)
    }
}

/// The data a copied pmd reference stores: the value and the slot it was read from.
#[doc(hidden)]
pub struct CopiedSource<'a, B: PgtableBackend> {
    pub(crate) value: B::PmdSnapshot,
    pub(crate) slot: &'a B::PmdSlot,
}

impl<B: PgtableBackend> Clone for CopiedSource<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: PgtableBackend> Copy for CopiedSource<'_, B> {}

impl Provenance for CopiedUnderRcu<'_> {
    type Source<'a, B: PgtableBackend + 'a> = CopiedSource<'a, B>;
    fn read<'a, B: PgtableBackend + 'a>(_: &B, src: &CopiedSource<'a, B>) -> B::PmdSnapshot {
        src.value
    }
    fn recheck_slot<'a, B: PgtableBackend + 'a>(_: &CopiedSource<'a, B>) -> Option<&'a B::PmdSlot> {
        None
    }
}

impl Provenance for Detached {
    type Source<'a, B: PgtableBackend + 'a> = B::PmdSnapshot;
    fn read<'a, B: PgtableBackend + 'a>(_: &B, src: &B::PmdSnapshot) -> B::PmdSnapshot {
        *src
    }
    fn recheck_slot<'a, B: PgtableBackend + 'a>(_: &B::PmdSnapshot) -> Option<&'a B::PmdSlot> {
        None
    }
}

impl Provenance for Unprotected {
    type Source<'a, B: PgtableBackend + 'a> = B::PmdSnapshot;
    fn read<'a, B: PgtableBackend + 'a>(_: &B, src: &B::PmdSnapshot) -> B::PmdSnapshot {
        *src
    }
    fn recheck_slot<'a, B: PgtableBackend + 'a>(_: &B::PmdSnapshot) -> Option<&'a B::PmdSlot> {
        None
    }
}

impl ProvesProtection for InTable {
    type LockAccess = Attached;
    const LOCK_KIND: MapKind = MapKind::MapLock;
}
impl ProvesProtection for CopiedUnderRcu<'_> {
    type LockAccess = Unverified;
    const LOCK_KIND: MapKind = MapKind::MapLock;
}
impl ProvesProtection for Detached {
    type LockAccess = Owned;
    const LOCK_KIND: MapKind = MapKind::Owned;
}

/// Access state of a locked PTE map: the type parameter of
/// [`PteLocked`](super::PteLocked). Sealed.
pub trait Access: sealed::SealedAccess {}

sealed_markers! {
    sealed::SealedAccess => Access:

    /// Locked, and the pmd was seen unchanged under the lock: the table is installed and its
    /// entries are stable against other software writers. Writes allowed.
    Attached,

    /// Locked, but nothing proves the table is still installed (a `rw_nolock` map before its
    /// `pmd_same` recheck, or a lock taken on a copied pmd). No writes until
    /// [`revalidate`](super::PteLocked::revalidate).
    Unverified,

    /// Locked through `pte_offset_map_ro_nolock`: reads only, forever.
    ReadOnly,

    /// The holder owns the (detached) table. Writes allowed.
    Owned,
}

/// Access states that may write PTEs: [`Attached`] and [`Owned`].
#[diagnostic::on_unimplemented(
    message = "a PTE lock in state `{Self}` does not allow writes",
    label = "this lock does not prove the table is still installed",
    note = "`Unverified`: call `.revalidate(&pmd)` (pmd_same under the lock) and write through the `Attached` lock it returns",
    note = "`ReadOnly`: a `pte_offset_map_ro_nolock` lock never writes; use `pte_offset_map_lock` or `pte_offset_map_rw_nolock`"
)]
pub trait CanWrite: Access {}
impl CanWrite for Attached {}
impl CanWrite for Owned {}

/// State of a detached table: the type parameter of [`DetachedPmd`](super::DetachedPmd). Sealed.
pub trait DetachState: sealed::SealedState {}

sealed_markers! {
    sealed::SealedState => DetachState:

    /// A table no walker can have seen: freshly allocated, or withdrawn from a deposit. It may be
    /// freed at once, deposited, or populated.
    Fresh,

    /// A table that was installed and has been unlinked: lockless readers that read the slot
    /// before the unlink may still be inside it. It may be populated again or freed after a grace
    /// period, never freed at once.
    Retired,
}

/// Formats a value whose type carries the marker `M` as `name { kind: M, field: value }`: the
/// `Debug` form of every proof- or state-carrying type (`PmdRef`, `PteLocked`, `PteNolock`,
/// `DetachedPmd`), so that a printed value says which proof or state it holds.
pub(crate) fn fmt_marked<M>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    kind: &str,
    field: &str,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    f.debug_struct(name)
        .field(kind, &core::any::type_name::<M>())
        .field(field, value)
        .finish()
}
