//! Race-window delays: a testing aid that stretches the windows between a remover's unlocked
//! snapshot and its locked recheck, so that a missing recheck shows up in a short run.
//!
//! # The model
//!
//! A recheck under a lock guards a window that is, in a normal run, a few hundred
//! nanoseconds wide: the time between a decision made without the lock (the VMA has no
//! `anon_vma`, so its table may be retracted) and the lock being taken. A race that needs
//! another thread to act inside that window is real but rare, so a test of the recheck passes
//! as often with the recheck removed as with it. The kernel's answer is KCSAN's delay
//! injection: at a marked access, wait a little, at random, so that the other side of the race
//! gets to run. The in-memory MMU does the same at the windows named by [`Window`]: with
//! [`Mmu::set_race_delays`]`(n)`, one pass in `n` through a window sleeps for
//! [`DELAY`]. Delays change timing only, never a result: a correct operation behaves the same
//! with them (a run is as reproducible as without), and a missing recheck is found in seconds.
//!
//! Off (`0`) by default. The torture run delays every pass (`--race-delays 1`, its default):
//! without the delays, a retract that skips its `anon_vma` recheck loses pages in one
//! default run out of three; with them, in every run (2 to 5 pages each; `docs/reliability.md`).

use super::Mmu;
use core::cell::Cell;
use core::sync::atomic::Ordering;
use std::time::Duration;

/// How long a delayed pass through a window sleeps.
pub const DELAY: Duration = Duration::from_micros(200);

/// The windows the MMU can stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// `retract_page_tables`: between reading the VMA's `anon_vma` without the locks and
    /// rechecking it under the PMD and PTE locks (B4).
    RetractAnonVma,
    /// `collapse_pte_mapped_thp`: between the VMA check under the mmap read lock and the PMD
    /// lock.
    CollapseFile,
}

std::thread_local! {
    /// A per-thread xorshift state: no shared cache line, no lock.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// One pass in `one_in`, decided by this thread's generator (seeded from its stack address).
fn roll(one_in: u32) -> bool {
    RNG.with(|c| {
        let mut x = c.get();
        if x == 0 {
            x = (c as *const Cell<u64> as u64) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        x % u64::from(one_in) == 0
    })
}

impl Mmu {
    /// Turns race-window delays on: one pass in `one_in` through each [`Window`] sleeps for
    /// [`DELAY`]; `0` turns them off (the default). See the [module docs](self).
    ///
    /// ```
    /// use typed_pgtable::mmu::{Mmu, MmuConfig};
    /// let mmu = Mmu::new(MmuConfig::default()).unwrap();
    /// mmu.set_race_delays(8);
    /// assert_eq!(mmu.race_delays(), 8);
    /// ```
    pub fn set_race_delays(&self, one_in: u32) {
        self.race_delays.store(one_in, Ordering::Relaxed);
    }

    /// The current setting of [`Mmu::set_race_delays`].
    pub fn race_delays(&self) -> u32 {
        self.race_delays.load(Ordering::Relaxed)
    }

    /// A pass through `window`: sleeps now and then if delays are on.
    #[inline]
    pub(crate) fn race_window(&self, window: Window) {
        let one_in = self.race_delays.load(Ordering::Relaxed);
        if one_in != 0 && roll(one_in) {
            let _ = window;
            std::thread::sleep(DELAY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_n_passes_is_delayed() {
        // Fewer rolls under Miri, which runs this a thousand times slower.
        let n = if cfg!(miri) { 4_000 } else { 100_000 };
        let hits = (0..n).filter(|_| roll(16)).count();
        assert!((n / 25..n / 11).contains(&hits), "{hits} of {n}");
        assert!((0..1000).all(|_| roll(1)));
    }
}
