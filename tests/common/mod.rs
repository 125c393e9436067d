//! Helpers shared by the integration tests: the end-of-test cleanliness check and a bounded
//! run clock for concurrent tests.
//!
//! Each test file that uses them says `mod common;`; not every file uses every helper.
#![allow(dead_code)]

pub mod model;
pub mod rng;
pub mod scenario;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};
use typed_pgtable::mmu::Mmu;

/// After every thread is done: let deferred frees run, then the audit must be silent and the
/// tables consistent.
pub fn assert_clean(mmu: &Mmu) {
    mmu.rcu_barrier();
    let report = mmu.audit().report();
    assert_eq!(
        mmu.audit().violations(),
        0,
        "page-table use-after-free, first reports: {:?}",
        &report[..report.len().min(3)]
    );
    let problems = mmu.check_tables();
    assert!(problems.is_empty(), "inconsistent tables: {problems:?}");
}

/// Runs `f` on another thread and waits for it: the other side of an interleaving that a
/// test replays step by step. The calling thread keeps its locks and read sections, which the
/// lock checker would (rightly) refuse to see the other side take on the same thread.
pub fn on_another_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    thread::scope(|s| s.spawn(f).join().expect("the other thread panicked"))
}

/// How long a concurrent test runs: at least `run`, and, on a loaded machine where the
/// workers have not made progress by then, until they have, but never past `run * 3`.
pub struct Stopwatch {
    start: Instant,
    run: Duration,
}

impl Stopwatch {
    /// Starts the clock. `TYPED_PGTABLE_STRESS_MS` overrides `run` for longer soaks.
    pub fn new(run: Duration) -> Self {
        let run = std::env::var("TYPED_PGTABLE_STRESS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(run, Duration::from_millis);
        Stopwatch {
            start: Instant::now(),
            run,
        }
    }

    /// Sleeps on the calling thread until the run is over, then sets `stop`.
    pub fn wait_then_stop(&self, stop: &AtomicBool, progressed: impl Fn() -> bool) {
        let hard = self.run * 3;
        while self.start.elapsed() < self.run || (!progressed() && self.start.elapsed() < hard) {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, SeqCst);
    }
}

/// Runs `step` over and over until `stop` is set (checked before each round): the loop of
/// every walker (lockless, GUP-fast, locked) and busy thread of the concurrent tests. Return
/// from `step` to start the next round.
pub fn until_stopped(stop: &AtomicBool, mut step: impl FnMut()) {
    while !stop.load(SeqCst) {
        step();
    }
}
