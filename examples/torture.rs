//! The main job: an rcutorture-style run of every page-table operation of the in-memory MMU
//! on all cores, with the audit and the lock checker armed.
//!
//! Readers walk the tables the ways the kernel does: lockless with an RCU-copied pmd (case 2),
//! GUP-fast (case 2 with the pmd and pte recheck, on PTE tables and huge pmds), and under the
//! mmap or VMA lock (case 3) in three modes: `pte_offset_map_lock` writing the accessed bit,
//! `pte_offset_map_rw_nolock` writers that lock and revalidate before they write, and
//! `pte_offset_map` readers. Updaters run a seeded random mix of faults, THP maps and splits,
//! khugepaged retracts and collapses, copy-on-write faults, `MADV_DONTNEED` with empty-table
//! reclaim, munmap with `free_pgtables`, and mremap's `move_normal_pmd`, with race-window
//! delays on (`--race-delays`, see `typed_pgtable::mmu::delay`). The run ends with a report
//! table (operations, the audit's violations per rule, the lock checker's reports per rule)
//! and a whole-MMU consistency check; it exits non-zero on any violation, lock report,
//! inconsistent table or lost anonymous page.
//!
//! `--unprotected` swaps the lockless readers for ones that keep a pmd past their read section
//! and map it through the `unsafe` escape hatch: the audit must then report violations.
//! `--threads 1` runs one thread through a fixed number of seeded operations (`--ops`), so the
//! same `--seed` gives the same counts every time.

use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use typed_pgtable::mmu::AuditRule;
use typed_pgtable::mmu::lockdep;
use typed_pgtable::mmu::{Mmu, MmuConfig, PMD_SIZE, VmaKind};
use typed_pgtable::provenance::{
    Attached, InTable, PmdRef, PteLocked, pte_offset_map, pte_offset_map_lock,
    pte_offset_map_rw_nolock, pte_offset_map_unprotected,
};

const BASE: u64 = 0x4000_0000;
/// Where `move_normal_pmd` parks tables: one VMA per region, of the region's kind, in another
/// 1 GiB (a table moves only between VMAs of one kind, and takes its `anon_vma` with it).
const SPARE: u64 = 0x8000_0000;
const PAGES: u64 = 48;

const USAGE: &str =
    "usage: torture [--seconds N] [--threads N] [--seed N] [--frames N] [--regions N] \
[--ops N (with --threads 1)] [--only k1,k2,..] [--race-delays N (0: off)] [--unprotected] \
[--no-progress]
kinds: fault huge split retract collapse_file collapse_anon cow reclaim munmap mremap";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Walk,
    Gup,
    LockedWalk,
    NolockWrite,
    MappedRead,
    Fault,
    Huge,
    Split,
    Retract,
    CollapseFile,
    CollapseAnon,
    Cow,
    Reclaim,
    Munmap,
    Mremap,
}

const ALL: [Kind; 15] = [
    Kind::Walk,
    Kind::Gup,
    Kind::LockedWalk,
    Kind::NolockWrite,
    Kind::MappedRead,
    Kind::Fault,
    Kind::Huge,
    Kind::Split,
    Kind::Retract,
    Kind::CollapseFile,
    Kind::CollapseAnon,
    Kind::Cow,
    Kind::Reclaim,
    Kind::Munmap,
    Kind::Mremap,
];
/// The updaters' operations: everything but the five kinds of reader.
const UPDATES: &[Kind] = ALL.split_at(5).1;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Walk => "lockless walk",
            Kind::Gup => "gup_fast",
            Kind::LockedWalk => "locked write",
            Kind::NolockWrite => "rw_nolock write",
            Kind::MappedRead => "mapped read",
            Kind::Fault => "fault",
            Kind::Huge => "huge fault",
            Kind::Split => "split",
            Kind::Retract => "retract",
            Kind::CollapseFile => "collapse_file",
            Kind::CollapseAnon => "collapse_anon",
            Kind::Cow => "cow",
            Kind::Reclaim => "reclaim",
            Kind::Munmap => "munmap",
            Kind::Mremap => "mremap",
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Kind::Huge => "huge",
            Kind::CollapseFile => "collapse_file",
            Kind::CollapseAnon => "collapse_anon",
            other => other.name(),
        }
    }
    fn index(self) -> usize {
        ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct Opts {
    seconds: f64,
    threads: usize,
    seed: u64,
    frames: usize,
    regions: u64,
    ops: u64,
    kinds: Vec<Kind>,
    race_delays: u32,
    unprotected: bool,
    progress: bool,
}

fn parse() -> Result<Opts, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut o = Opts {
        seconds: 10.0,
        threads: (3 * cores).max(4),
        seed: 0x5eed,
        frames: 64 * 1024,
        regions: 24,
        ops: 200_000,
        // Every operation; retract three times as often, since it is the remover the lockless
        // readers race most directly (and most retracts find nothing to do).
        kinds: UPDATES
            .iter()
            .copied()
            .chain([Kind::Retract, Kind::Retract])
            .collect(),
        // Every pass through a race window sleeps (see `typed_pgtable::mmu::delay`).
        race_delays: 1,
        unprotected: false,
        progress: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |v: String, name: &str| v.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match a.as_str() {
            "--seconds" => o.seconds = val(&a)?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--threads" => o.threads = num(val(&a)?, &a)? as usize,
            "--seed" => o.seed = num(val(&a)?, &a)?,
            "--frames" => o.frames = num(val(&a)?, &a)? as usize,
            "--regions" => o.regions = num(val(&a)?, &a)?,
            "--ops" => o.ops = num(val(&a)?, &a)?,
            "--only" => {
                let list = val(&a)?;
                o.kinds = list
                    .split(',')
                    .map(|s| {
                        UPDATES
                            .iter()
                            .copied()
                            .find(|k| k.flag() == s.trim())
                            .ok_or_else(|| format!("unknown kind {s:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--race-delays" => {
                o.race_delays = u32::try_from(num(val(&a)?, &a)?)
                    .map_err(|_| "--race-delays: too large".to_string())?
            }
            "--unprotected" => o.unprotected = true,
            "--no-progress" => o.progress = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(o.seconds > 0.0 && o.seconds.is_finite()) {
        return Err("--seconds must be positive".into());
    }
    if o.threads == 0 || o.threads > 256 {
        return Err("--threads must be between 1 and 256".into());
    }
    if !(2..=256).contains(&o.regions) {
        return Err("--regions must be between 2 and 256".into());
    }
    if o.kinds.is_empty() {
        return Err("--only needs at least one kind".into());
    }
    Ok(o)
}

// The generator the tests use, shared by path; the example needs only part of it.
#[path = "../tests/common/rng.rs"]
#[allow(dead_code)]
mod rng;
use rng::Rng;

struct Stats {
    ok: Vec<AtomicU64>,
    failed: Vec<AtomicU64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ok: ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            failed: ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn count(&self, k: Kind, ok: bool) {
        let v = if ok { &self.ok } else { &self.failed };
        v[k.index()].fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.ok
            .iter()
            .chain(&self.failed)
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Even regions are anonymous VMAs, odd ones file VMAs; each is one 2 MiB VMA.
fn region_kind(r: u64) -> VmaKind {
    if r % 2 == 0 {
        VmaKind::Anon
    } else {
        VmaKind::File
    }
}
fn region(r: u64) -> u64 {
    BASE + r * PMD_SIZE
}
fn page(r: u64, p: u64) -> u64 {
    region(r) + p * 0x1000
}

/// Flips the accessed bit of the page at `va` through a lock that proved attachment.
fn toggle_young(pte: &PteLocked<'_, Mmu, Attached>, va: u64) -> bool {
    let old = pte.ptep_get(va);
    if !old.is_present() || old.is_special() {
        return false;
    }
    let new = if old.is_young() {
        old.mkold()
    } else {
        old.mkyoung()
    };
    pte.set_pte(va, new).is_ok()
}

struct World<'a> {
    mmu: &'a Mmu,
    o: &'a Opts,
    stats: &'a Stats,
}

impl World<'_> {
    fn walk(&self, rng: &mut Rng) {
        let va = page(rng.below(self.o.regions), rng.below(PAGES));
        let guard = self.mmu.rcu_read_lock();
        let mut ok = false;
        if let Ok(Some(copy)) = self.mmu.pmd_copy_lockless(&guard, va) {
            if let Ok(map) = pte_offset_map(&copy, va) {
                ok = (0..8).any(|i| map.ptep_get(va + i * 0x1000).is_present())
                    && copy.still_installed();
            }
        }
        self.stats.count(Kind::Walk, ok);
    }

    fn unprotected_walk(&self, rng: &mut Rng) {
        let va = page(rng.below(self.o.regions), rng.below(PAGES));
        let Ok(Some(stale)) = self.mmu.pmd_read_unprotected(va) else {
            self.stats.count(Kind::Walk, false);
            return;
        };
        std::thread::yield_now();
        // SAFETY: deliberately unsound (`--unprotected`): the value is kept past its read
        // section. The MMU never releases frame memory, so this is a logical use-after-free
        // that the audit reports, not undefined behaviour.
        let ok = match unsafe { pte_offset_map_unprotected(&stale, va) } {
            Ok(map) => (0..8)
                .map(|i| {
                    std::thread::yield_now();
                    map.ptep_get(va + i * 0x1000).is_present()
                })
                .fold(false, |a, b| a | b),
            Err(_) => false,
        };
        self.stats.count(Kind::Walk, ok);
    }

    fn gup(&self, rng: &mut Rng) {
        let va = page(rng.below(self.o.regions), rng.below(PAGES - 8));
        let pins = self.mmu.gup_fast(va, 8).unwrap_or_default();
        let ok = !pins.is_empty() && pins.iter().all(|p| self.mmu.page_refs(p.pfn()) >= 1);
        self.stats.count(Kind::Gup, ok);
    }

    /// Case 3 under the mmap read lock or a VMA read lock, one of three ways: a
    /// `pte_offset_map_lock` writer (the lock's recheck proves attachment), an `rw_nolock`
    /// writer that revalidates with `pmd_same` under the PTE lock before it writes, or a plain
    /// `pte_offset_map` reader that yields between entries (only the map's own read section
    /// keeps the table alive against a retract, which takes neither lock).
    fn locked_walk(&self, rng: &mut Rng) {
        let va = page(rng.below(self.o.regions), rng.below(PAGES));
        let kind = [Kind::LockedWalk, Kind::NolockWrite, Kind::MappedRead][rng.below(3) as usize];
        // Now and then give the CPU away inside the window (a yield costs a time slice when
        // every core is busy, so not every time).
        let widen = rng.below(128) == 0;
        let pause = || {
            if widen {
                std::thread::yield_now();
            }
        };
        let run = |pmd: Option<PmdRef<'_, '_, Mmu, InTable>>| {
            let Some(pmd) = pmd else { return false };
            match kind {
                Kind::LockedWalk => match pte_offset_map_lock(&pmd, va) {
                    Ok(pte) => toggle_young(&pte, va),
                    Err(_) => false,
                },
                Kind::NolockWrite => {
                    let Ok(nolock) = pte_offset_map_rw_nolock(&pmd, va) else {
                        return false;
                    };
                    pause();
                    match nolock.lock().revalidate(&pmd) {
                        Ok(pte) => toggle_young(&pte, va),
                        Err(_) => false,
                    }
                }
                _ => match pte_offset_map(&pmd, va) {
                    Ok(map) => (0..4)
                        .map(|i| {
                            pause();
                            map.ptep_get(va + i * 0x1000).is_present()
                        })
                        .fold(false, |a, b| a | b),
                    Err(_) => false,
                },
            }
        };
        let ok = if rng.below(2) == 0 {
            match self.mmu.lock_vma_under_rcu(va) {
                Some(vg) => run(vg.pmd_offset(va).ok().flatten()),
                None => false,
            }
        } else {
            let mm = self.mmu.mmap_read_lock();
            run(mm.pmd_offset(va).ok().flatten())
        };
        self.stats.count(kind, ok);
    }

    fn populate(&self, r: u64, rng: &mut Rng, n: u64) {
        for _ in 0..n {
            let _ = self.mmu.map_page(page(r, rng.below(PAGES)));
        }
    }

    fn update(&self, kind: Kind, rng: &mut Rng) {
        let mmu = self.mmu;
        let r = rng.below(self.o.regions);
        let anon = region_kind(r) == VmaKind::Anon;
        let ok = match kind {
            Kind::Fault => mmu.map_page(page(r, rng.below(PAGES))).is_ok(),
            Kind::Huge => mmu.map_huge(region(r)).is_ok(),
            Kind::Split => {
                let s = mmu.split_huge_pmd(region(r));
                matches!(s, Ok(o) if o != typed_pgtable::mmu::SplitOutcome::NotHuge)
            }
            Kind::Retract => !anon && mmu.retract_page_tables(region(r)).is_ok_and(|n| n > 0),
            Kind::CollapseFile => {
                !anon
                    && matches!(
                        mmu.collapse_pte_mapped_thp(region(r)),
                        Ok(typed_pgtable::mmu::CollapseOutcome::Collapsed)
                    )
            }
            Kind::CollapseAnon => {
                anon && matches!(
                    mmu.collapse_huge_page(region(r)),
                    Ok(typed_pgtable::mmu::CollapseOutcome::Collapsed)
                )
            }
            Kind::Cow => !anon && mmu.cow_fault(page(r, rng.below(PAGES))).is_ok(),
            Kind::Reclaim => mmu
                .madvise_dontneed(region(r), PMD_SIZE, true)
                .is_ok_and(|z| z.tables_reclaimed > 0),
            Kind::Munmap => {
                let ok = mmu.munmap(region(r), PMD_SIZE).is_ok();
                let _ = mmu.mmap(region(r), PMD_SIZE, region_kind(r));
                self.populate(r, rng, 8);
                ok
            }
            Kind::Mremap => {
                let spare = SPARE + r * PMD_SIZE;
                let ok = mmu.move_normal_pmd(region(r), spare).is_ok();
                if ok && mmu.move_normal_pmd(spare, region(r)).is_err() {
                    // The region was refaulted meanwhile: drop what was parked.
                    let _ = mmu.madvise_dontneed(spare, PMD_SIZE, true);
                }
                ok
            }
            _ => false,
        };
        if kind != Kind::Munmap && rng.below(4) == 0 {
            self.populate(r, rng, 4);
        }
        self.stats.count(kind, ok);
    }

    fn reader(&self, t: usize, rng: &mut Rng) {
        match t % 3 {
            0 if self.o.unprotected => self.unprotected_walk(rng),
            0 => self.walk(rng),
            1 => self.gup(rng),
            _ => self.locked_walk(rng),
        }
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
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rng = Rng(o.seed);
    for r in 0..o.regions {
        let spare = SPARE + r * PMD_SIZE;
        if let Err(e) = mmu
            .mmap(region(r), PMD_SIZE, region_kind(r))
            .and_then(|()| mmu.mmap(spare, PMD_SIZE, region_kind(r)))
        {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        for p in 0..PAGES {
            if rng.below(2) == 0 {
                let _ = mmu.map_page(page(r, p));
            }
        }
    }
    let stats = Stats::new();
    let stop = AtomicBool::new(false);
    let backlog_peak = AtomicU64::new(0);
    let world = World {
        mmu: &mmu,
        o: &o,
        stats: &stats,
    };
    let readers = if o.threads == 1 {
        0
    } else {
        (o.threads / 2).max(2).min(o.threads - 1)
    };
    let updaters = o.threads - readers;
    println!(
        "torture: seed {}, {} thread(s) ({} readers{}, {} updaters), {} regions, {} frames, {}",
        o.seed,
        o.threads,
        readers,
        if o.unprotected { ", UNPROTECTED" } else { "" },
        updaters,
        o.regions,
        o.frames,
        if o.threads == 1 {
            format!("{} ops", o.ops)
        } else {
            format!("{:.1} s", o.seconds)
        }
    );
    mmu.set_race_delays(o.race_delays);
    match o.race_delays {
        0 => {}
        1 => println!("race-window delays: every pass"),
        n => println!("race-window delays: one pass in {n}"),
    }
    let bar = if o.progress {
        ProgressBar::new(if o.threads == 1 {
            o.ops
        } else {
            (o.seconds * 10.0) as u64
        })
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let panicked = std::thread::scope(|s| {
        let mut handles = Vec::new();
        if o.threads == 1 {
            let (world, bar) = (&world, &bar);
            handles.push(s.spawn(move || {
                let mut rng = Rng(world.o.seed ^ 0xa076_1d64_78bd_642f);
                for i in 0..world.o.ops {
                    match rng.below(4) {
                        0 => {
                            let k = world.o.kinds[rng.below(world.o.kinds.len() as u64) as usize];
                            world.update(k, &mut rng)
                        }
                        n => world.reader(n as usize - 1, &mut rng),
                    }
                    if i % 1024 == 0 {
                        bar.set_position(i);
                    }
                }
            }));
        } else {
            for t in 0..o.threads {
                let (world, stop) = (&world, &stop);
                handles.push(s.spawn(move || {
                    let mut rng =
                        Rng(world.o.seed ^ (t as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
                    while !stop.load(Ordering::Relaxed) {
                        if t < readers {
                            world.reader(t, &mut rng);
                        } else {
                            let k = world.o.kinds[rng.below(world.o.kinds.len() as u64) as usize];
                            world.update(k, &mut rng);
                        }
                    }
                }));
            }
            while start.elapsed().as_secs_f64() < o.seconds {
                std::thread::sleep(Duration::from_millis(100));
                let r = mmu.rcu().stats();
                backlog_peak.fetch_max(r.callbacks_queued - r.callbacks_run, Ordering::Relaxed);
                bar.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
                bar.set_message(format!(
                    "{} ops, {} violations",
                    stats.total(),
                    mmu.audit().violations()
                ));
            }
            stop.store(true, Ordering::Relaxed);
        }
        handles
            .into_iter()
            .map(|h| h.join().is_err())
            .fold(false, |a, b| a | b)
    });
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    mmu.rcu_barrier();
    let rcu = mmu.rcu().stats();
    let s = mmu.stats();
    let violations = mmu.audit().violations();
    let problems = mmu.check_tables();

    println!(
        "{:<16} {:>12} {:>12} {:>12}",
        "operation", "done", "per second", "no-op/fail"
    );
    for k in ALL {
        let ok = stats.ok[k.index()].load(Ordering::Relaxed);
        let failed = stats.failed[k.index()].load(Ordering::Relaxed);
        println!(
            "{:<16} {:>12} {:>12.0} {:>12}",
            k.name(),
            ok,
            ok as f64 / elapsed,
            failed
        );
    }
    println!("{:<16} {:>12.2} s", "elapsed", elapsed);
    println!("{:<16} {:>12}", "grace periods", rcu.grace_periods);
    println!(
        "{:<16} {:>12}  (tables; {} RCU callbacks run)",
        "deferred frees", s.tables_freed_deferred, rcu.callbacks_run
    );
    println!(
        "{:<16} {:>12}  (callbacks queued, not yet run)",
        "peak backlog",
        backlog_peak.load(Ordering::Relaxed)
    );
    println!(
        "{:<16} {:>12}  (splits {}, collapses {}, reclaims {}, pgtables freed {}, moves {})",
        "tables",
        s.tables_installed,
        s.splits,
        s.collapses,
        s.reclaims,
        s.pgtables_freed,
        s.pmd_moves
    );
    println!("{:<16} {:>12}", "audit checks", mmu.audit().checks());
    println!("{:<16} {:>12}", "violations", violations);
    for rule in AuditRule::ALL {
        println!(
            "  {:<42} {:>8}",
            rule.name(),
            mmu.audit().violations_of(rule)
        );
    }
    let locks = lockdep::stats();
    println!("{:<16} {:>12}", "lock checks", locks.checks);
    println!("{:<16} {:>12}", "lock reports", locks.reports());
    for (what, n) in [
        ("sleeping lock in a read section", locks.sleeping_in_section),
        (
            "grace-period wait in a read section",
            locks.grace_period_in_section,
        ),
        ("recursive locking", locks.recursion),
        ("I10 lock order", locks.order),
        ("leaked read sections", locks.leaked_sections),
    ] {
        println!("  {what:<42} {n:>8}");
    }
    println!("{:<16} {:>12}", "lost anon pages", s.anon_pages_lost);
    println!("{:<16} {:>12}", "bad tables", problems.len());
    for v in mmu.audit().report().iter().take(5) {
        println!("  {v}");
    }
    for p in problems.iter().take(5) {
        println!("  {p}");
    }
    let mut fail = false;
    if panicked {
        eprintln!("FAIL: a thread panicked");
        fail = true;
    }
    if violations > 0 {
        eprintln!("FAIL: the audit reported {violations} protocol violations");
        fail = true;
    }
    if locks.reports() > 0 {
        eprintln!("FAIL: the lock checker reported {}", locks.reports());
        fail = true;
    }
    if s.anon_pages_lost > 0 || !problems.is_empty() {
        eprintln!(
            "FAIL: {} lost anonymous pages, {} inconsistent tables",
            s.anon_pages_lost,
            problems.len()
        );
        fail = true;
    }
    if fail {
        return ExitCode::FAILURE;
    }
    println!("PASS");
    ExitCode::SUCCESS
}
