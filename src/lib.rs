//! # typed-pgtable
//!
//! Page-table walks whose protection is a type.
//!
//! Linux's `pte_offset_map()` maps the PTE table a pmd names, and the pmd may be protected in
//! three different ways: it is a slot inside a page table reached under a walk lock, or a copy
//! read inside an RCU read section that is still open, or a value naming a table the caller
//! detached and owns. In C the difference is a comment, and every bug in this area is a caller
//! without the proof it believed it had. Here the proof is a marker type on the pmd reference
//! ([`InTable`](provenance::InTable), [`CopiedUnderRcu<'g>`](provenance::CopiedUnderRcu),
//! [`Detached`](provenance::Detached)); [`pte_offset_map`](provenance::pte_offset_map) and its
//! family compile only with one of them, and no map outlives the guard it came from.
//!
//! ```
//! use typed_pgtable::mmu::{Mmu, MmuConfig};
//! use typed_pgtable::provenance::{pte_offset_map, pte_offset_map_lock};
//!
//! let mmu = Mmu::new(MmuConfig::default())?;
//! mmu.map_page(0x7000)?;
//!
//! // Case 3: walk under the mmap lock; the pmd borrows the lock token.
//! let mm = mmu.mmap_read_lock();
//! let pmd = mm.pmd_offset(0x7000)?.expect("upper levels exist");
//! let pte = pte_offset_map_lock(&pmd, 0x7000).expect("a PTE table");
//! assert!(pte.pte().is_present());
//! drop(pte);
//! drop(mm);
//!
//! // Case 2: a lockless walk inside an RCU read section (GUP-fast style).
//! let guard = mmu.rcu_read_lock();
//! let copy = mmu.pmd_copy_lockless(&guard, 0x7000)?.expect("upper levels exist");
//! let map = pte_offset_map(&copy, 0x7000).expect("a PTE table");
//! assert!(map.pte().is_present());
//! # Ok::<(), typed_pgtable::Error>(())
//! ```
//!
//! # Layout
//!
//! - [`provenance`]: the markers, pmd references, PTE map and lock states and detached tables.
//!   `no_std` + `alloc`; knows no memory layout and works through
//!   [`PgtableBackend`](provenance::PgtableBackend).
//! - [`ops`]: kernel operations written once over the traits (GUP-fast, retract, fill and
//!   install), used by the MMU and by any backend.
//! - [`rcu`]: the RCU domain trait (`no_std`) and the default backend on crossbeam-epoch.
//! - [`mmu`] (feature `std`, default): an in-memory x86-64 MMU that implements the backend,
//!   with split page-table locks, deferred frees and a use-after-free audit.
//! - [`Error`], [`NoMap`]: typed errors; nothing in the crate panics on bad input.
//!
//! The [`guide`] teaches the three proofs with runnable and `compile_fail` examples; the
//! [`kernel_map`] table maps each kernel function to the call and proof that play its part.
//!
//! With `default-features = false` the crate is `#![no_std]` and brings only the vocabulary of
//! proofs, for a kernel that implements the backend traits for its own tables, locks and RCU.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

/// `impl Default` as `<T>::new()`, for the types whose `new` takes no argument and whose
/// default is exactly that (the RCU domains).
macro_rules! default_is_new {
    ($($t:ty),+ $(,)?) => {
        $(
            impl Default for $t {
                fn default() -> Self {
                    <$t>::new()
                }
            }
        )+
    };
}

pub mod bound;
pub mod error;
#[cfg(feature = "heap")]
pub mod heap;
#[cfg(feature = "std")]
pub mod mmu;
pub mod ops;
pub mod provenance;
pub mod rcu;
#[doc(hidden)]
pub mod sync;

pub use error::{Error, NoMap, Rejected};

/// Kernel functions and the typed-pgtable calls (and proofs) that play their part.
#[cfg(all(any(doc, doctest), feature = "std"))]
pub mod kernel_map {
    #![doc = include_str!("../docs/kernel-map.md")]
}

/// Guide: the three proofs, what each allows, and what the compiler rejects.
#[cfg(all(any(doc, doctest), feature = "std"))]
pub mod guide {
    #![doc = include_str!("../docs/guide.md")]
}

#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "std"))]
pub struct ReadmeDoctests;
