//! The main job: a torture run of page-table walkers against a remover, with the use-after-free
//! audit armed.
//!
//! Threads:
//! - lockless walkers (case 2): open an RCU read section, copy the pmd in a lockless walk,
//!   `pte_offset_map` the copy, read PTEs, recheck the pmd against its slot (GUP-fast style);
//! - locked walkers (case 3): take the mmap read lock, walk to the pmd slot,
//!   `pte_offset_map_lock` (lock, `pmd_same` recheck, retry), read and age PTEs;
//! - one retracter: detaches whole PTE tables under the PMD and PTE locks
//!   (`pmdp_collapse_flush`), frees them after a grace period (`pte_free_defer`), and faults the
//!   pages back in.
//!
//! It prints a report and exits non-zero on any violation. `--unprotected` swaps the lockless
//! walkers for ones that keep a pmd value past their read section and map it through the
//! `unsafe` escape hatch: the audit must then report violations.
//!
//! ```text
//! cargo run --release --example torture -- [--seconds N] [--threads N] [--seed N]
//!                                          [--frames N] [--regions N] [--unprotected]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use typed_pgtable::mmu::{Mmu, MmuConfig, PMD_SIZE};
use typed_pgtable::provenance::{pte_offset_map, pte_offset_map_lock, pte_offset_map_unprotected};

const PAGES_PER_REGION: u64 = 32;
const BASE: u64 = 0x4000_0000;

#[derive(Debug, Clone, Copy)]
struct Opts {
    seconds: f64,
    threads: usize,
    seed: u64,
    frames: usize,
    regions: u64,
    unprotected: bool,
}

const USAGE: &str = "usage: torture [--seconds N] [--threads N>=2] [--seed N] [--frames N] \
                     [--regions N>=1] [--unprotected]";

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        seconds: 10.0,
        threads: 4,
        seed: 0x5eed,
        frames: 16 * 1024,
        regions: 16,
        unprotected: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => {
                o.seconds = val("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--threads" => {
                o.threads = val("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--seed" => o.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--frames" => {
                o.frames = val("--frames")?
                    .parse()
                    .map_err(|e| format!("--frames: {e}"))?
            }
            "--regions" => {
                o.regions = val("--regions")?
                    .parse()
                    .map_err(|e| format!("--regions: {e}"))?
            }
            "--unprotected" => o.unprotected = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(o.seconds > 0.0 && o.seconds.is_finite()) {
        return Err("--seconds must be positive".into());
    }
    if o.threads < 2 {
        return Err("--threads must be at least 2 (one lockless and one locked walker)".into());
    }
    if o.regions == 0 || o.regions > 256 {
        return Err("--regions must be between 1 and 256".into());
    }
    Ok(o)
}

/// splitmix64: small, seedable, good enough to pick addresses.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Counts {
    lockless_walks: AtomicU64,
    lockless_hits: AtomicU64,
    rechecks_failed: AtomicU64,
    locked_walks: AtomicU64,
    locked_writes: AtomicU64,
    retracts: AtomicU64,
    remapped_pages: AtomicU64,
}

fn page_va(region: u64, page: u64) -> u64 {
    BASE + region * PMD_SIZE + page * 0x1000
}

fn populate(mmu: &Mmu, region: u64) -> u64 {
    let mut n = 0;
    for page in 0..PAGES_PER_REGION {
        if mmu.map_page(page_va(region, page)).is_ok() {
            n += 1;
        }
    }
    n
}

fn lockless_walker(mmu: &Mmu, o: &Opts, c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let va = page_va(rng.below(o.regions), rng.below(PAGES_PER_REGION));
        let guard = mmu.rcu_read_lock();
        let Ok(Some(copy)) = mmu.pmd_copy_lockless(&guard, va) else {
            continue;
        };
        if let Ok(map) = pte_offset_map(&copy, va) {
            let mut present = 0;
            for i in 0..8 {
                if map.ptep_get(va + i * 0x1000).is_present() {
                    present += 1;
                }
            }
            if present > 0 {
                c.lockless_hits.fetch_add(1, Ordering::Relaxed);
            }
            // GUP-fast's recheck: did the table stay installed while we looked?
            if !copy.still_installed() {
                c.rechecks_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        c.lockless_walks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The broken walker: keeps the pmd value after its read section and maps it without proof.
fn unprotected_walker(mmu: &Mmu, o: &Opts, c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let va = page_va(rng.below(o.regions), rng.below(PAGES_PER_REGION));
        let Ok(Some(stale)) = mmu.pmd_read_unprotected(va) else {
            continue;
        };
        // Widen the window in which the table can be retracted and freed.
        for _ in 0..rng.below(4) {
            std::thread::yield_now();
        }
        // SAFETY: deliberately unsound: the value is kept past its read section. The MMU's
        // arena never releases memory, so this is a logical use-after-free the audit reports,
        // not undefined behaviour.
        if let Ok(map) = unsafe { pte_offset_map_unprotected(&stale, va) } {
            for i in 0..8 {
                let _ = map.ptep_get(va + i * 0x1000);
                std::thread::yield_now();
            }
        }
        c.lockless_walks.fetch_add(1, Ordering::Relaxed);
    }
}

fn locked_walker(mmu: &Mmu, o: &Opts, c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let va = page_va(rng.below(o.regions), rng.below(PAGES_PER_REGION));
        let mm = mmu.mmap_read_lock();
        if let Ok(Some(pmd)) = mm.pmd_offset(va) {
            if let Ok(pte) = pte_offset_map_lock(&pmd, va) {
                let old = pte.ptep_get(va);
                if old.is_present() {
                    // Age the page, as reclaim's young-bit scan does; allowed: `Attached`.
                    let new = if old.is_young() {
                        old.mkold()
                    } else {
                        old.mkyoung()
                    };
                    pte.set_pte(va, new);
                    c.locked_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.locked_walks.fetch_add(1, Ordering::Relaxed);
    }
}

fn retracter(mmu: &Mmu, o: &Opts, c: &Counts, stop: &AtomicBool, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let region = rng.below(o.regions);
        if mmu.retract_pte_table(page_va(region, 0)).is_ok() {
            c.retracts.fetch_add(1, Ordering::Relaxed);
        }
        c.remapped_pages
            .fetch_add(populate(mmu, region), Ordering::Relaxed);
    }
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mmu = match Mmu::new(MmuConfig {
        frames: o.frames,
        va_limit: 1 << 40,
    }) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for region in 0..o.regions {
        populate(&mmu, region);
    }
    let walkers = o.threads;
    let lockless = walkers.div_ceil(2);
    println!(
        "torture: {:.1} s, {} lockless{} + {} locked walkers, 1 retracter, seed {}, {} regions x {} pages",
        o.seconds,
        lockless,
        if o.unprotected { " (UNPROTECTED)" } else { "" },
        walkers - lockless,
        o.seed,
        o.regions,
        PAGES_PER_REGION
    );

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..=walkers {
        let (mmu, counts, stop) = (mmu.clone(), counts.clone(), stop.clone());
        let rng = Rng(o.seed ^ (t as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        handles.push(std::thread::spawn(move || {
            if t == walkers {
                retracter(&mmu, &o, &counts, &stop, rng)
            } else if t < lockless && o.unprotected {
                unprotected_walker(&mmu, &o, &counts, &stop, rng)
            } else if t < lockless {
                lockless_walker(&mmu, &o, &counts, &stop, rng)
            } else {
                locked_walker(&mmu, &o, &counts, &stop, rng)
            }
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut panicked = false;
    for h in handles {
        panicked |= h.join().is_err();
    }
    let elapsed = start.elapsed().as_secs_f64();
    mmu.rcu_barrier();

    let c = &*counts;
    let s = mmu.stats();
    let r = mmu.rcu().stats();
    let violations = mmu.audit().violations();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!("elapsed            {elapsed:>12.2} s");
    println!(
        "lockless walks     {:>12}  ({} saw pages, {} pmd rechecks failed)",
        get(&c.lockless_walks),
        get(&c.lockless_hits),
        get(&c.rechecks_failed)
    );
    println!(
        "locked walks       {:>12}  ({} PTE writes)",
        get(&c.locked_walks),
        get(&c.locked_writes)
    );
    println!(
        "retracts           {:>12}  ({} pages faulted back)",
        get(&c.retracts),
        get(&c.remapped_pages)
    );
    println!("tables installed   {:>12}", s.tables_installed);
    println!(
        "deferred frees     {:>12}  (tables; {} RCU callbacks run of {} queued)",
        s.tables_freed_deferred, r.callbacks_run, r.callbacks_queued
    );
    println!(
        "immediate frees    {:>12}  (never-published tables)",
        s.tables_freed_now
    );
    println!("audit checks       {:>12}", mmu.audit().checks());
    println!("violations         {violations:>12}");
    for v in mmu.audit().report().iter().take(5) {
        println!("  {v}");
    }
    if panicked {
        eprintln!("FAIL: a thread panicked");
        return ExitCode::FAILURE;
    }
    if violations > 0 {
        eprintln!("FAIL: {violations} page-table use-after-free detected");
        return ExitCode::FAILURE;
    }
    println!("PASS");
    ExitCode::SUCCESS
}
