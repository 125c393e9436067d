//! Building the MMU a test starts from.

use typed_pgtable::mmu::{Mmu, MmuConfig};

/// An MMU with `frames` frames of physical memory and `va_limit` bytes of virtual space.
pub fn mmu_with(frames: usize, va_limit: u64) -> Mmu {
    Mmu::new(MmuConfig { frames, va_limit }).expect("a valid MMU config")
}
