//! Helpers shared by the loom model files (`tests/loom.rs`, `tests/loom_crate.rs`): running a
//! model with the preemption bound from the environment and reporting its size, and counting
//! which outcomes the explored interleavings reached.
//!
//! Not a test target of its own (Cargo builds `tests/*.rs` and `tests/*/main.rs`); each model
//! file includes it with `mod loom_common;`.

use std::io::Write as _;
use std::time::Instant;

/// Runs `model` under loom with the preemption bound from `LOOM_MAX_PREEMPTIONS` (default 2)
/// and reports how many interleavings it explored, also when the model fails.
pub fn check<F>(name: &'static str, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    struct Report {
        name: &'static str,
        bound: usize,
        runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        start: Instant,
    }
    impl Drop for Report {
        fn drop(&mut self) {
            let runs = self.runs.load(std::sync::atomic::Ordering::Relaxed);
            let outcome = if std::thread::panicking() {
                format!("FAILED in interleaving {runs}")
            } else {
                format!("passed, {runs} interleavings")
            };
            // Straight to stderr, past the test harness's capture, so CI logs show the sizes.
            let line = format!(
                "loom {}: {outcome} (preemption bound {}, {:.3} s)\n",
                self.name,
                self.bound,
                self.start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _report = Report {
        name,
        bound,
        runs: runs.clone(),
        start: Instant::now(),
    };
    builder.check(move || {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
}

/// Counts, over all explored interleavings, how often each outcome of a model happened, so a
/// passing model can also show that it reached the interesting paths (a walker that saw the
/// table, a retry, ...). Plain std atomics: loom does not see them.
#[derive(Clone, Default)]
pub struct Tally(std::sync::Arc<[std::sync::atomic::AtomicUsize; 16]>);

impl Tally {
    /// Counts one occurrence of `outcome` (below 16).
    pub fn hit(&self, outcome: usize) {
        self.0[outcome].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How often `outcome` happened so far.
    pub fn get(&self, outcome: usize) -> usize {
        self.0[outcome].load(std::sync::atomic::Ordering::Relaxed)
    }
}
