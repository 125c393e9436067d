//! The threads of a loom model: the walkers spawned at the start of each interleaving and
//! joined at its end, and the [`Tally`] of what their outcomes were over all interleavings.
//!
//! For the loom model files only (`tests/loom.rs`, `tests/loom_crate.rs`, built with
//! `--cfg loom`), which include it with `#[path = "common/loom_threads.rs"] mod loom_threads;`
//! next to `mod loom_common;`.

use crate::loom_common::{Tally, check};
use loom::sync::Arc;
use loom::thread::{self, JoinHandle};

/// Runs `model` under [`check`]; `model` records each interleaving's outcomes in the tally it
/// is given, which is returned once every interleaving has run.
pub fn check_tallied<F>(name: &'static str, model: F) -> Tally
where
    F: Fn(&Tally) + Sync + Send + 'static,
{
    let tally = Tally::default();
    let t = tally.clone();
    check(name, move || model(&t));
    tally
}

/// The walker threads of one interleaving, in the order they were spawned.
pub struct Walkers<R>(Vec<JoinHandle<R>>);

impl<R: Send + 'static> Walkers<R> {
    /// Spawns `n` threads; thread `i` runs `walker(&shared, i)` on a clone of `shared`.
    pub fn spawn<S, F>(shared: &Arc<S>, n: usize, walker: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(&S, usize) -> R + Copy + Send + 'static,
    {
        Walkers(
            (0..n)
                .map(|i| {
                    let shared = shared.clone();
                    thread::spawn(move || walker(&shared, i))
                })
                .collect(),
        )
    }

    /// Waits for every walker, in spawn order, and returns what each returned.
    pub fn join(self) -> Vec<R> {
        self.0.into_iter().map(|h| h.join().unwrap()).collect()
    }
}
