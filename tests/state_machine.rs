//! State-machine test of every MMU operation, on one thread, against a reference model
//! (`proptest-state-machine`).
//!
//! # The address space
//!
//! Four 2 MiB regions with VMAs (anonymous, file, anonymous, file, at 0, 2, 4 and 6 MiB) and two
//! spare pmd slots that start without a VMA: one right after them (8 MiB, same PMD table and PMD
//! lock) and one at 512 GiB (its own PUD and PMD tables, another PMD lock). `mmap` gives the
//! first spare an anonymous VMA and the second a file VMA; `move_normal_pmd` moves tables
//! between VMAs of one kind (regions and spares), and the destination takes the source's
//! `anon_vma`. The arena has 4096 frames (plenty: seven free huge runs) or, in a
//! quarter of the cases, 2048 (three huge runs, so huge allocations run out).
//!
//! # The model
//!
//! [`Model`] holds, for every slot, nothing, a PTE table (possibly empty) with its present PTEs
//! (anonymous page, file page or the zero page), or a huge page (a real one or the huge zero
//! page, with a deposited table); plus each region's VMA and `anon_vma`, which upper-level tables
//! exist, whether the zero page and the huge zero page were allocated, and the counters the MMU
//! keeps (`anon_pages_lost`, splits, collapses, PT_RECLAIMs, retracts, `free_pgtables`, moves).
//! [`Model::step`] predicts the exact result of every operation, errors included, from reading
//! the source of each operation.
//!
//! The reference state machine runs `step` assuming every allocation succeeds and with frame
//! numbers unknown (0); it drives generation (and the preconditions used while shrinking). The
//! system under test carries its own copy of the model, the *shadow*, which `step` updates from
//! what the MMU reported: the frame numbers it handed out, and, where the outcome depends on
//! frame availability, which alternative happened. Those alternatives are predicted from the free
//! frames and the free aligned 512-frame runs observed just before the call; they are exact
//! except for `map_huge`, whose small reservation may land in the last free run (then either
//! result is accepted and the shadow follows the MMU). While no allocation failed, the shadow and
//! the reference must agree up to frame numbers; after one failed, generation just uses a stale
//! model.
//!
//! # After every transition
//!
//! Deferred frees are flushed (`rcu_barrier`), then: the audit has no violation,
//! `check_tables()` is empty, `dump()` shows exactly the model's pmds, PTEs (raw values),
//! deposits and upper tables, `translate` agrees with the model on a sample of every slot, a
//! census of `frame_kind` over the whole arena matches the model (free, data, PTE tables, upper
//! tables) and so does `free_frames()`, every mapped page holds one reference, the VMAs and their
//! `anon_vma` match, and so do the counters of `stats()`.
//!
//! # Teardown
//!
//! Every slot is unmapped with `munmap` (which zaps and frees page tables whether or not a VMA is
//! there), then after `rcu_barrier` every frame must be free except the PGD, PUD and PMD tables
//! and the zero page and huge zero page if they were allocated: no leak and no double free.
//!
//! # Running
//!
//! 512 cases of 1 to 39 transitions (4 under Miri); `PROPTEST_CASES` overrides that. Failing
//! cases are shrunk and their seeds kept in `tests/state_machine.regressions`, which is replayed
//! first on every run. `STATE_MACHINE_OUTCOMES=1` makes `generator_reaches_every_outcome` print
//! how often each operation had each outcome.

#![cfg(feature = "std")]

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use typed_pgtable::Error;
use typed_pgtable::mmu::{
    CollapseOutcome, FrameKind, Mmu, MmuConfig, MmuDump, PAGE_SIZE, PMD_SIZE, PmdKind, Pte,
    SplitOutcome, VmaKind, ZapStats, classify_pmd, huge_entry,
};

/// Regions with a VMA.
const REGIONS: usize = 4;
/// Pmd slots: the regions, then the spares.
const SLOTS: usize = REGIONS + 2;
/// What backs each slot's VMA, when it has one.
const KINDS: [VmaKind; SLOTS] = [
    VmaKind::Anon,
    VmaKind::File,
    VmaKind::Anon,
    VmaKind::File,
    VmaKind::Anon,
    VmaKind::File,
];
/// Where each slot starts.
const SLOT_VA: [u64; SLOTS] = [
    0,
    PMD_SIZE,
    2 * PMD_SIZE,
    3 * PMD_SIZE,
    4 * PMD_SIZE,
    1 << 39,
];
/// One past the contiguous slots 0..=4.
const CONTIGUOUS_END: u64 = 5 * PMD_SIZE;
const VA_LIMIT: u64 = 1 << 40;
const PTES: u64 = 512;
const HUGE_FRAMES: usize = 512;
/// PTE indices the page operations use.
const IDX: [u16; 6] = [0, 1, 2, 255, 256, 511];
/// Page boundaries range operations start or end at.
const BOUNDS: [u32; 9] = [0, 1, 2, 255, 256, 257, 510, 511, 512];
/// Offsets inside a region for the operations that take any address of it.
const OFFSETS: [u64; 4] = [0, 0x1000, 0x1_2345, PMD_SIZE - 1];

fn page_va(slot: usize, idx: u16) -> u64 {
    SLOT_VA[slot] + u64::from(idx) * PAGE_SIZE
}

/// The slot and PTE index of an address, if it lies in a slot.
fn slot_at(va: u64) -> Option<(usize, u16)> {
    (0..SLOTS)
        .find(|&s| SLOT_VA[s] <= va && va < SLOT_VA[s] + PMD_SIZE)
        .map(|s| (s, ((va - SLOT_VA[s]) / PAGE_SIZE) as u16))
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anon,
    File,
    /// The zero page, mapped special (after a huge zero page split).
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    pfn: u64,
    kind: Kind,
    /// The head of the huge folio the page belongs to, for the pages of a split huge page: the
    /// folio's references live on its head, one per PTE, and its 512 frames are freed together
    /// when the last one goes.
    folio: Option<u64>,
}

impl Page {
    fn pte(self) -> Pte {
        match self.kind {
            Kind::Anon => Pte::anon_page(self.pfn),
            Kind::File => Pte::page(self.pfn),
            Kind::Zero => Pte::special(self.pfn),
        }
    }
}

/// What a pmd slot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Pmd {
    #[default]
    None,
    /// A PTE table (possibly empty) and its present PTEs by index.
    Table(BTreeMap<u16, Page>),
    /// A huge page at `pfn` (the huge zero page if `zero`), with a deposited table.
    Huge { pfn: u64, zero: bool },
}

/// Counters of `MmuStats` the model predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ctr {
    anon_pages_lost: u64,
    splits: u64,
    collapses: u64,
    reclaims: u64,
    retracts: u64,
    pgtables_freed: u64,
    pmd_moves: u64,
}

#[derive(Clone, PartialEq, Eq)]
struct Model {
    frames: usize,
    slots: [Pmd; SLOTS],
    /// `Some(anon_vma)` if the slot has a VMA.
    vmas: [Option<bool>; SLOTS],
    /// PUD tables (keyed by `va >> 39`) and PMD tables (`va >> 30`) that exist.
    puds: BTreeSet<u64>,
    pmds: BTreeSet<u64>,
    zero: Option<u64>,
    huge_zero: Option<u64>,
    ctr: Ctr,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tables print as index ranges of (kind, pfn), so a split table stays readable.
        let mut d = f.debug_struct("Model");
        d.field("frames", &self.frames);
        for (s, pmd) in self.slots.iter().enumerate() {
            if *pmd == Pmd::None {
                continue;
            }
            let text = match pmd {
                Pmd::Table(t) => format!("Table({} ptes: {})", t.len(), summarize(t)),
                other => format!("{other:?}"),
            };
            d.field(&format!("slot{s}"), &text);
        }
        d.field("vmas", &self.vmas)
            .field("puds", &self.puds)
            .field("pmds", &self.pmds)
            .field("zero", &self.zero)
            .field("huge_zero", &self.huge_zero)
            .field("ctr", &self.ctr)
            .finish()
    }
}

/// `idx..=idx kind@pfn` runs of consecutive pages.
fn summarize(t: &BTreeMap<u16, Page>) -> String {
    let mut out = Vec::new();
    let mut run: Option<(u16, u16, Page)> = None;
    for (&i, &p) in t {
        match run {
            Some((a, b, first))
                if b + 1 == i
                    && first.kind == p.kind
                    && (p.kind == Kind::Zero || first.pfn + u64::from(i - a) == p.pfn) =>
            {
                run = Some((a, i, first));
            }
            _ => {
                out.extend(run.map(|(a, b, p)| format!("{a}..={b} {:?}@{:#x}", p.kind, p.pfn)));
                run = Some((i, i, p));
            }
        }
    }
    out.extend(run.map(|(a, b, p)| format!("{a}..={b} {:?}@{:#x}", p.kind, p.pfn)));
    out.join(", ")
}

type R<T> = Result<T, String>;

/// What the MMU returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Res {
    Pfn(Result<u64, Error>),
    Num(Result<usize, Error>),
    Split(Result<SplitOutcome, Error>),
    Collapse(Result<CollapseOutcome, Error>),
    Zap(Result<ZapStats, Error>),
    Unit(Result<(), Error>),
    Pins(Vec<u64>),
    Translate(Result<Option<u64>, Error>),
}

impl Res {
    fn err(&self) -> Option<Error> {
        match self {
            Res::Pfn(r) => r.err(),
            Res::Num(r) => r.err(),
            Res::Split(r) => r.err(),
            Res::Collapse(r) => r.err(),
            Res::Zap(r) => r.err(),
            Res::Unit(r) => r.err(),
            Res::Translate(r) => r.err(),
            Res::Pins(_) => None,
        }
    }

    /// A short name of the outcome, for the coverage count.
    fn tag(&self) -> String {
        fn short<T: std::fmt::Debug>(r: &Result<T, Error>, ok: Option<String>) -> String {
            match r {
                Ok(v) => ok.unwrap_or_else(|| format!("{v:?}")),
                Err(e) => format!("{e:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_string(),
            }
        }
        match self {
            Res::Pfn(r) => short(r, Some("Ok".into())),
            // 0, 1, or 2 for "2 or more".
            Res::Num(r) => short(r, r.as_ref().ok().map(|n| format!("{}", n.min(&2)))),
            Res::Split(r) => short(r, None),
            Res::Collapse(r) => short(r, None),
            Res::Zap(r) => short(
                r,
                r.as_ref().ok().map(|z| {
                    format!(
                        "pages:{} huge:{} reclaimed:{}",
                        z.pages > 0,
                        z.huge > 0,
                        z.tables_reclaimed > 0
                    )
                }),
            ),
            Res::Unit(r) => short(r, Some("Ok".into())),
            Res::Pins(p) => format!("pins:{}", p.len().min(2)),
            Res::Translate(r) => short(r, r.as_ref().ok().map(|t| format!("{}", t.is_some()))),
        }
    }
}

/// What the system under test observed around one call.
struct Obs {
    res: Res,
    /// Free frames before the call.
    free: usize,
    /// Free aligned 512-frame runs before the call.
    runs: usize,
    /// The state after the call (and a grace period).
    dump: MmuDump,
    /// The zero page after the call, if allocated.
    zero: Option<u64>,
}

/// Checks a prediction against the observation, if there is one (the reference has none: it
/// assumes every allocation succeeds, and learns frame number 0).
struct Ck<'a> {
    obs: Option<&'a Obs>,
    /// An allocation was predicted to fail, or may have.
    short: Cell<bool>,
}

impl<'a> Ck<'a> {
    fn new(obs: Option<&'a Obs>) -> Self {
        Ck {
            obs,
            short: Cell::new(false),
        }
    }

    /// Whether `alloc_n(n)` succeeds: exact.
    fn small(&self, n: usize) -> bool {
        let ok = self.obs.is_none_or(|o| o.free >= n);
        if !ok {
            self.short.set(true);
        }
        ok
    }

    /// Whether `alloc_huge` succeeds after `small_before` frames were allocated in the same
    /// call: each of those spoils at most one free run. `None`: it may go either way.
    fn huge(&self, small_before: usize) -> Option<bool> {
        let Some(o) = self.obs else {
            return Some(true);
        };
        if o.runs > small_before {
            return Some(true);
        }
        self.short.set(true);
        if o.runs == 0 { Some(false) } else { None }
    }

    fn got(&self) -> Option<&'a Res> {
        self.obs.map(|o| &o.res)
    }

    fn expect(&self, want: Res) -> R<()> {
        match self.got() {
            Some(got) if *got != want => Err(format!("expected {want:?}, got {got:?}")),
            _ => Ok(()),
        }
    }

    fn expect_err(&self, e: Error) -> R<()> {
        match self.got() {
            Some(got) if got.err() != Some(e) => Err(format!("expected Err({e:?}), got {got:?}")),
            _ => Ok(()),
        }
    }

    fn expect_oom(&self) -> R<()> {
        match self.got() {
            Some(got) if !matches!(got.err(), Some(Error::OutOfFrames { .. })) => {
                Err(format!("expected Err(OutOfFrames), got {got:?}"))
            }
            _ => Ok(()),
        }
    }

    /// The frame an `Ok(pfn)` result reported.
    fn ok_pfn(&self) -> R<u64> {
        match self.got() {
            None => Ok(0),
            Some(Res::Pfn(Ok(p))) => Ok(*p),
            Some(got) => Err(format!("expected Ok(pfn), got {got:?}")),
        }
    }

    /// Whether the call failed (for outcomes that may go either way).
    fn failed(&self) -> bool {
        self.got().is_some_and(|r| r.err().is_some())
    }

    /// The huge page the dump shows at `slot` after the call.
    fn huge_after(&self, slot: usize) -> R<u64> {
        let Some(o) = self.obs else { return Ok(0) };
        o.dump
            .entries
            .iter()
            .find(|e| e.0 == 2 && e.1 == SLOT_VA[slot])
            .and_then(|e| match classify_pmd(e.2, u64::MAX) {
                PmdKind::Huge(pfn) => Some(pfn),
                _ => None,
            })
            .ok_or_else(|| format!("expected a huge pmd at slot {slot} after the call"))
    }

    /// The zero page, read from the zero-page PTEs the dump shows after the call.
    fn zero_after(&self) -> R<u64> {
        let Some(o) = self.obs else { return Ok(0) };
        o.dump
            .entries
            .iter()
            .map(|e| Pte::from_raw(e.2))
            .find(|p| p.is_special())
            .and_then(Pte::pfn)
            .ok_or_else(|| "expected zero-page PTEs after the call".to_string())
    }
}

/// A transition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    MapPage {
        slot: usize,
        idx: u16,
    },
    UnmapPage {
        slot: usize,
        idx: u16,
    },
    MapHuge {
        slot: usize,
        zero: bool,
    },
    UnmapHuge {
        slot: usize,
    },
    SplitHugePmd {
        slot: usize,
        off: u64,
    },
    RetractPageTables {
        slot: usize,
        off: u64,
    },
    RetractPteTable {
        slot: usize,
        off: u64,
    },
    CollapsePteMappedThp {
        slot: usize,
        off: u64,
    },
    CollapseHugePage {
        slot: usize,
        off: u64,
    },
    CowFault {
        slot: usize,
        idx: u16,
    },
    /// `[SLOT_VA[slot] + first * 4 KiB, + pages * 4 KiB)`, may run into the next slots.
    MadviseDontneed {
        slot: usize,
        first: u32,
        pages: u32,
        reclaim: bool,
    },
    /// The same kind of range as `MadviseDontneed`.
    Munmap {
        slot: usize,
        first: u32,
        pages: u32,
    },
    Mmap {
        slot: usize,
    },
    MovePmd {
        from: usize,
        to: usize,
    },
    /// Pin `n` pages from page `idx` of the slot, check the pins and their references, unpin.
    GupFast {
        slot: usize,
        idx: u16,
        n: u16,
    },
    Translate {
        va: u64,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::MapPage { .. } => "map_page",
            Op::UnmapPage { .. } => "unmap_page",
            Op::MapHuge { zero: false, .. } => "map_huge",
            Op::MapHuge { zero: true, .. } => "map_huge_zero",
            Op::UnmapHuge { .. } => "unmap_huge",
            Op::SplitHugePmd { .. } => "split_huge_pmd",
            Op::RetractPageTables { .. } => "retract_page_tables",
            Op::RetractPteTable { .. } => "retract_pte_table",
            Op::CollapsePteMappedThp { .. } => "collapse_pte_mapped_thp",
            Op::CollapseHugePage { .. } => "collapse_huge_page",
            Op::CowFault { .. } => "cow_fault",
            Op::MadviseDontneed { reclaim: false, .. } => "madvise_dontneed",
            Op::MadviseDontneed { reclaim: true, .. } => "madvise_dontneed+reclaim",
            Op::Munmap { .. } => "munmap",
            Op::Mmap { .. } => "mmap",
            Op::MovePmd { .. } => "move_normal_pmd",
            Op::GupFast { .. } => "gup_fast",
            Op::Translate { .. } => "translate",
        }
    }
}

fn range_of(slot: usize, first: u32, pages: u32) -> (u64, u64) {
    let start = SLOT_VA[slot] + u64::from(first) * PAGE_SIZE;
    (start, start + u64::from(pages) * PAGE_SIZE)
}

impl Model {
    fn new(frames: usize) -> Model {
        Model {
            frames,
            slots: Default::default(),
            vmas: [
                Some(false),
                Some(false),
                Some(false),
                Some(false),
                None,
                None,
            ],
            puds: BTreeSet::new(),
            pmds: BTreeSet::new(),
            zero: None,
            huge_zero: None,
            ctr: Ctr::default(),
        }
    }

    /// The model without frame numbers (what the reference can know).
    fn normalized(&self) -> Model {
        let mut m = self.clone();
        for pmd in &mut m.slots {
            match pmd {
                Pmd::Table(t) => t.values_mut().for_each(|p| {
                    p.pfn = 0;
                    p.folio = p.folio.map(|_| 0);
                }),
                Pmd::Huge { pfn, .. } => *pfn = 0,
                Pmd::None => {}
            }
        }
        m.zero = m.zero.map(|_| 0);
        m.huge_zero = m.huge_zero.map(|_| 0);
        m
    }

    fn vma_kind(&self, slot: usize) -> Option<VmaKind> {
        self.vmas[slot].is_some().then(|| KINDS[slot])
    }

    fn anon_vma_prepare(&mut self, slot: usize) {
        if self.vmas[slot].is_some() {
            self.vmas[slot] = Some(true);
        }
    }

    /// The pmd slot exists (`pmd_offset` is `Some`).
    fn has_upper(&self, va: u64) -> bool {
        self.pmds.contains(&(va >> 30))
    }

    fn missing_upper(&self, va: u64) -> usize {
        if !self.puds.contains(&(va >> 39)) {
            2
        } else {
            usize::from(!self.pmds.contains(&(va >> 30)))
        }
    }

    fn alloc_upper(&mut self, va: u64) {
        self.puds.insert(va >> 39);
        self.pmds.insert(va >> 30);
    }

    fn set(&mut self, slot: usize, pmd: Pmd) {
        self.slots[slot] = pmd;
    }

    fn table_mut(&mut self, slot: usize) -> &mut BTreeMap<u16, Page> {
        if self.slots[slot] == Pmd::None {
            self.slots[slot] = Pmd::Table(BTreeMap::new());
        }
        match &mut self.slots[slot] {
            Pmd::Table(t) => t,
            other => panic!("model bug: no table at slot {slot}: {other:?}"),
        }
    }

    fn translate(&self, va: u64) -> Option<u64> {
        let (slot, idx) = slot_at(va)?;
        match &self.slots[slot] {
            Pmd::Huge { pfn, .. } => Some((pfn << 12) + (va & (PMD_SIZE - 1))),
            Pmd::Table(t) => t.get(&idx).map(|p| (p.pfn << 12) | (va & (PAGE_SIZE - 1))),
            Pmd::None => None,
        }
    }

    /// Every data frame in use: every mapped page, all 512 frames of every huge folio that a
    /// huge pmd or at least one PTE maps, the zero page and the huge zero page. `Err` if a
    /// frame is mapped twice.
    fn data_frames(&self) -> R<BTreeSet<u64>> {
        let mut mapped = BTreeSet::new();
        let mut data = BTreeSet::new();
        let mut heads = BTreeSet::new();
        let mut map = |pfn: u64| {
            if mapped.insert(pfn) {
                Ok(())
            } else {
                Err(format!("model: frame {pfn:#x} is mapped twice"))
            }
        };
        for pmd in &self.slots {
            match pmd {
                Pmd::Table(t) => {
                    for p in t.values().filter(|p| p.kind != Kind::Zero) {
                        map(p.pfn)?;
                        match p.folio {
                            Some(head) => heads.insert(head),
                            None => data.insert(p.pfn),
                        };
                    }
                }
                Pmd::Huge { pfn, zero: false } => {
                    for f in *pfn..pfn + PTES {
                        map(f)?;
                    }
                    data.extend(*pfn..pfn + PTES);
                }
                _ => {}
            }
        }
        for head in heads {
            data.extend(head..head + PTES);
        }
        if let Some(z) = self.zero {
            map(z)?;
            data.insert(z);
        }
        if let Some(h) = self.huge_zero {
            for f in h..h + PTES {
                map(f)?;
            }
            data.extend(h..h + PTES);
        }
        Ok(data)
    }

    /// The references each folio (keyed by its head, or the page itself) must hold: one per
    /// PTE that maps one of its pages, one for a huge pmd.
    fn folio_refs(&self) -> BTreeMap<u64, u32> {
        let mut refs = BTreeMap::new();
        for pmd in &self.slots {
            match pmd {
                Pmd::Table(t) => {
                    for p in t.values().filter(|p| p.kind != Kind::Zero) {
                        *refs.entry(p.folio.unwrap_or(p.pfn)).or_default() += 1;
                    }
                }
                Pmd::Huge { pfn, zero: false } => *refs.entry(*pfn).or_default() += 1,
                _ => {}
            }
        }
        refs
    }

    /// The folio of every mapped frame (the zero pages excepted).
    fn folios(&self) -> BTreeMap<u64, u64> {
        let mut folios = BTreeMap::new();
        for pmd in &self.slots {
            match pmd {
                Pmd::Table(t) => {
                    for p in t.values().filter(|p| p.kind != Kind::Zero) {
                        folios.insert(p.pfn, p.folio.unwrap_or(p.pfn));
                    }
                }
                Pmd::Huge { pfn, zero: false } => {
                    folios.extend((*pfn..pfn + PTES).map(|f| (f, *pfn)));
                }
                _ => {}
            }
        }
        folios
    }

    /// A new data frame must not be in use already.
    fn check_fresh(&self, ck: &Ck<'_>, pfn: u64, n: u64) -> R<()> {
        if ck.obs.is_none() {
            return Ok(());
        }
        let used = self.data_frames()?;
        match (pfn..pfn + n).find(|f| used.contains(f)) {
            Some(f) => Err(format!("frame {f:#x} handed out while still mapped")),
            None => Ok(()),
        }
    }

    /// `__split_huge_pmd` on the huge pmd of `slot`: `Err(())` if the zero page it needs
    /// cannot be allocated (then nothing changes).
    fn split(&mut self, slot: usize, ck: &Ck<'_>) -> R<Result<SplitOutcome, ()>> {
        let Pmd::Huge { pfn, zero } = self.slots[slot] else {
            return Ok(Ok(SplitOutcome::NotHuge));
        };
        let table = if zero {
            let z = match self.zero {
                Some(z) => z,
                None => {
                    // The zero page is allocated on first use, before the entry is touched.
                    if !ck.small(1) {
                        return Ok(Err(()));
                    }
                    let z = ck.zero_after()?;
                    self.zero = Some(z);
                    z
                }
            };
            let page = Page {
                pfn: z,
                kind: Kind::Zero,
                folio: None,
            };
            (0..PTES as u16).map(|i| (i, page)).collect()
        } else {
            let kind = if self.vma_kind(slot) == Some(VmaKind::Anon) {
                Kind::Anon
            } else {
                Kind::File
            };
            (0..PTES as u16)
                .map(|i| {
                    let page = Page {
                        pfn: pfn + u64::from(i),
                        kind,
                        folio: Some(pfn),
                    };
                    (i, page)
                })
                .collect()
        };
        self.slots[slot] = Pmd::Table(table);
        self.ctr.splits += 1;
        Ok(Ok(if zero {
            SplitOutcome::ZeroSplit
        } else {
            SplitOutcome::Split
        }))
    }
    /// `zap_range` over `[start, end)`: whole huge pmds are zapped, partial ones split first,
    /// PTEs cleared, and with `reclaim` a table the zap of its whole range left empty is freed.
    fn zap(&mut self, start: u64, end: u64, reclaim: bool, ck: &Ck<'_>) -> R<ZapStats> {
        let mut st = ZapStats::default();
        let mut va = start;
        while va < end {
            let region = va & !(PMD_SIZE - 1);
            let next = (region + PMD_SIZE).min(end);
            let whole = va == region && next == region + PMD_SIZE;
            let slot = slot_at(region).map(|s| s.0);
            if let Some(slot) = slot.filter(|_| self.has_upper(va)) {
                let mut ptes = matches!(self.slots[slot], Pmd::Table(_));
                if let Pmd::Huge { .. } = self.slots[slot] {
                    if whole {
                        self.set(slot, Pmd::None);
                        st.huge += 1;
                    } else {
                        // A split that fails (no frame for the zero page) zaps nothing.
                        ptes = self.split(slot, ck)?.is_ok();
                    }
                }
                if ptes {
                    let lo = ((va - region) / PAGE_SIZE) as u16;
                    let hi = ((next - region) / PAGE_SIZE) as u16;
                    let t = self.table_mut(slot);
                    let before = t.len();
                    t.retain(|&i, _| i < lo || i >= hi);
                    st.pages += (before - t.len()) as u64;
                    if reclaim && whole && t.is_empty() {
                        self.set(slot, Pmd::None);
                        st.tables_reclaimed += 1;
                        self.ctr.reclaims += 1;
                    }
                }
            }
            va = next;
        }
        Ok(st)
    }

    /// Predicts the result of `op`, checks it against the observation if there is one, and
    /// moves to the state after it.
    fn step(&mut self, op: &Op, ck: &Ck<'_>) -> R<()> {
        match *op {
            Op::MapPage { slot, idx } => {
                let va = page_va(slot, idx);
                match &self.slots[slot] {
                    Pmd::Huge { .. } => return ck.expect_err(Error::HugeInTheWay { addr: va }),
                    Pmd::Table(t) if t.contains_key(&idx) => {
                        return ck.expect_err(Error::AlreadyMapped { addr: va });
                    }
                    _ => {}
                }
                let need = self.missing_upper(va) + usize::from(self.slots[slot] == Pmd::None) + 1;
                if !ck.small(need) {
                    return ck.expect_oom();
                }
                let pfn = ck.ok_pfn()?;
                self.check_fresh(ck, pfn, 1)?;
                self.alloc_upper(va);
                let kind = if self.vma_kind(slot) == Some(VmaKind::Anon) {
                    self.anon_vma_prepare(slot);
                    Kind::Anon
                } else {
                    Kind::File
                };
                let folio = None;
                self.table_mut(slot).insert(idx, Page { pfn, kind, folio });
            }
            Op::UnmapPage { slot, idx } => {
                let va = page_va(slot, idx);
                let page = match &self.slots[slot] {
                    Pmd::Huge { .. } if self.has_upper(va) => {
                        return ck.expect_err(Error::HugeInTheWay { addr: va });
                    }
                    Pmd::Table(t) => t.get(&idx).copied(),
                    _ => None,
                };
                let Some(page) = page else {
                    return ck.expect_err(Error::NotMapped { addr: va });
                };
                ck.expect(Res::Pfn(Ok(page.pfn)))?;
                self.table_mut(slot).remove(&idx);
            }
            Op::MapHuge { slot, zero } => {
                let va = SLOT_VA[slot];
                match self.slots[slot] {
                    Pmd::Huge { .. } => return ck.expect_err(Error::AlreadyMapped { addr: va }),
                    Pmd::Table(_) => return ck.expect_err(Error::TableInTheWay { addr: va }),
                    Pmd::None => {}
                }
                let k = self.missing_upper(va) + 1;
                if !ck.small(k) {
                    return ck.expect_oom();
                }
                // The first huge zero page comes with the 4 KiB zero page, allocated first.
                let extra = usize::from(zero && self.huge_zero.is_none() && self.zero.is_none());
                if !ck.small(k + extra) {
                    return ck.expect_oom();
                }
                if !(zero && self.huge_zero.is_some()) {
                    match ck.huge(k + extra) {
                        Some(true) => {}
                        Some(false) => return ck.expect_oom(),
                        // The reservation may have taken the last free run: either result.
                        None if ck.failed() => return ck.expect_oom(),
                        None => {}
                    }
                }
                let pfn = ck.ok_pfn()?;
                if zero {
                    match self.huge_zero {
                        Some(z) if ck.obs.is_some() && z != pfn => {
                            return Err(format!("huge zero page moved from {z:#x} to {pfn:#x}"));
                        }
                        Some(_) => {}
                        None => {
                            self.check_fresh(ck, pfn, PTES)?;
                            self.huge_zero = Some(pfn);
                            if self.zero.is_none() {
                                self.zero = Some(ck.obs.and_then(|o| o.zero).unwrap_or(0));
                            }
                        }
                    }
                } else {
                    self.check_fresh(ck, pfn, PTES)?;
                }
                if ck.obs.is_some() && pfn % PTES != 0 {
                    return Err(format!("huge page at unaligned frame {pfn:#x}"));
                }
                self.alloc_upper(va);
                if self.vma_kind(slot) == Some(VmaKind::Anon) {
                    self.anon_vma_prepare(slot);
                }
                self.slots[slot] = Pmd::Huge { pfn, zero };
            }
            Op::UnmapHuge { slot } => {
                let va = SLOT_VA[slot];
                match self.slots[slot] {
                    Pmd::Huge { pfn, .. } => {
                        ck.expect(Res::Pfn(Ok(pfn)))?;
                        self.set(slot, Pmd::None);
                    }
                    Pmd::Table(_) => return ck.expect_err(Error::TableInTheWay { addr: va }),
                    Pmd::None => return ck.expect_err(Error::NotMapped { addr: va }),
                }
            }
            Op::SplitHugePmd { slot, .. } => match self.split(slot, ck)? {
                Ok(outcome) => ck.expect(Res::Split(Ok(outcome)))?,
                Err(()) => ck.expect_oom()?,
            },
            Op::RetractPageTables { slot, .. } => {
                // Only a file VMA without anon_vma covering the range is retracted.
                let retractable = self.vma_kind(slot) == Some(VmaKind::File)
                    && self.vmas[slot] == Some(false)
                    && matches!(self.slots[slot], Pmd::Table(_));
                if retractable {
                    if let Pmd::Table(t) = &self.slots[slot] {
                        self.ctr.anon_pages_lost +=
                            t.values().filter(|p| p.kind == Kind::Anon).count() as u64;
                    }
                    self.ctr.retracts += 1;
                    self.set(slot, Pmd::None);
                }
                ck.expect(Res::Num(Ok(usize::from(retractable))))?;
            }
            Op::RetractPteTable { slot, off } => {
                let va = SLOT_VA[slot] + off;
                let n = match &self.slots[slot] {
                    Pmd::None => return ck.expect_err(Error::NotMapped { addr: va }),
                    Pmd::Huge { .. } => return ck.expect_err(Error::HugeInTheWay { addr: va }),
                    Pmd::Table(t) => {
                        self.ctr.anon_pages_lost +=
                            t.values().filter(|p| p.kind == Kind::Anon).count() as u64;
                        t.values().filter(|p| p.kind != Kind::Zero).count()
                    }
                };
                ck.expect(Res::Num(Ok(n)))?;
                self.ctr.retracts += 1;
                self.set(slot, Pmd::None);
            }
            Op::CollapsePteMappedThp { slot, .. } => {
                // Only tables of a file VMA that map file pages (and holes), and at least one,
                // collapse.
                let collapsible = match &self.slots[slot] {
                    Pmd::Table(t) => {
                        self.vma_kind(slot) == Some(VmaKind::File)
                            && !t.is_empty()
                            && t.values().all(|p| p.kind == Kind::File)
                    }
                    _ => false,
                };
                if !collapsible {
                    return ck.expect(Res::Collapse(Ok(CollapseOutcome::Aborted)));
                }
                // `alloc_huge`, then the deposit's `pte_alloc_one`; either failing leaves the
                // table removed and the range empty.
                let huge = ck.huge(0) == Some(true) && ck.small(HUGE_FRAMES + 1);
                if huge {
                    ck.expect(Res::Collapse(Ok(CollapseOutcome::Collapsed)))?;
                    let pfn = ck.huge_after(slot)?;
                    self.set(slot, Pmd::None);
                    self.check_fresh(ck, pfn, PTES)?;
                    self.slots[slot] = Pmd::Huge { pfn, zero: false };
                    self.ctr.collapses += 1;
                } else {
                    ck.expect(Res::Collapse(Ok(CollapseOutcome::TableRemoved)))?;
                    self.set(slot, Pmd::None);
                }
            }
            Op::CollapseHugePage { slot, off } => {
                let va = SLOT_VA[slot] + off;
                if self.vma_kind(slot) != Some(VmaKind::Anon) {
                    return ck.expect_err(Error::NotInVma { addr: va });
                }
                match self.slots[slot] {
                    Pmd::None => return ck.expect_err(Error::NotMapped { addr: va }),
                    Pmd::Huge { .. } => {
                        return ck.expect(Res::Collapse(Ok(CollapseOutcome::Aborted)));
                    }
                    Pmd::Table(_) => {}
                }
                if ck.huge(0) != Some(true) {
                    // The table is put back unchanged.
                    return ck.expect_oom();
                }
                ck.expect(Res::Collapse(Ok(CollapseOutcome::Collapsed)))?;
                let pfn = ck.huge_after(slot)?;
                self.slots[slot] = Pmd::None;
                self.check_fresh(ck, pfn, PTES)?;
                self.slots[slot] = Pmd::Huge { pfn, zero: false };
                self.ctr.collapses += 1;
            }
            Op::CowFault { slot, idx } => {
                let va = page_va(slot, idx);
                if self.vma_kind(slot) != Some(VmaKind::File) {
                    return ck.expect_err(Error::NotInVma { addr: va });
                }
                // Check, then allocate, then prepare the anon_vma: a failed fault changes
                // nothing.
                let old = match &self.slots[slot] {
                    Pmd::None => None,
                    Pmd::Huge { .. } => return ck.expect_err(Error::HugeInTheWay { addr: va }),
                    Pmd::Table(t) => t.get(&idx).filter(|p| p.kind != Kind::Anon),
                };
                if old.is_none() {
                    return ck.expect_err(Error::NotMapped { addr: va });
                }
                if !ck.small(1) {
                    return ck.expect_oom();
                }
                self.anon_vma_prepare(slot);
                let pfn = ck.ok_pfn()?;
                self.check_fresh(ck, pfn, 1)?;
                self.table_mut(slot).insert(
                    idx,
                    Page {
                        pfn,
                        kind: Kind::Anon,
                        folio: None,
                    },
                );
            }
            Op::MadviseDontneed {
                slot,
                first,
                pages,
                reclaim,
            } => {
                let (start, end) = range_of(slot, first, pages);
                let st = self.zap(start, end, reclaim, ck)?;
                ck.expect(Res::Zap(Ok(st)))?;
            }
            Op::Munmap { slot, first, pages } => {
                let (start, end) = range_of(slot, first, pages);
                let overlaps = |r: usize| SLOT_VA[r] < end && start < SLOT_VA[r] + PMD_SIZE;
                // detach_range: a VMA that straddles an edge fails the whole call.
                if let Some(r) = (0..SLOTS).find(|&r| {
                    self.vmas[r].is_some()
                        && overlaps(r)
                        && (SLOT_VA[r] < start || SLOT_VA[r] + PMD_SIZE > end)
                }) {
                    return ck.expect_err(Error::PartialVma { addr: SLOT_VA[r] });
                }
                for r in (0..SLOTS).filter(|&r| overlaps(r)) {
                    self.vmas[r] = None;
                }
                self.zap(start, end, false, ck)?;
                // free_pgtables: the tables of the slots wholly inside the range.
                let mut freed = 0;
                for s in (0..SLOTS).filter(|&s| {
                    SLOT_VA[s] >= start.next_multiple_of(PMD_SIZE) && SLOT_VA[s] + PMD_SIZE <= end
                }) {
                    if let Pmd::Table(t) = &self.slots[s] {
                        // Anonymous pages still mapped are lost (none: the range was zapped).
                        self.ctr.anon_pages_lost +=
                            t.values().filter(|p| p.kind == Kind::Anon).count() as u64;
                        freed += 1;
                        self.set(s, Pmd::None);
                    }
                }
                self.ctr.pgtables_freed += freed as u64;
                ck.expect(Res::Num(Ok(freed)))?;
            }
            Op::Mmap { slot } => {
                if self.vmas[slot].is_some() {
                    return ck.expect_err(Error::AlreadyMapped {
                        addr: SLOT_VA[slot],
                    });
                }
                ck.expect(Res::Unit(Ok(())))?;
                self.vmas[slot] = Some(false);
            }
            Op::MovePmd { from, to } => {
                let (old, new) = (SLOT_VA[from], SLOT_VA[to]);
                // Both ends wholly inside VMAs of one kind.
                let Some(kind) = self.vma_kind(from) else {
                    return ck.expect_err(Error::NotInVma { addr: old });
                };
                if self.vma_kind(to) != Some(kind) {
                    return ck.expect_err(Error::NotInVma { addr: new });
                }
                if !matches!(self.slots[from], Pmd::Table(_)) {
                    return ck.expect_err(Error::NotMapped { addr: old });
                }
                if !ck.small(self.missing_upper(new)) {
                    return ck.expect_oom();
                }
                self.alloc_upper(new);
                if self.slots[to] != Pmd::None {
                    return ck.expect_err(Error::AlreadyMapped { addr: new });
                }
                ck.expect(Res::Unit(Ok(())))?;
                // The table's anonymous pages stay covered by an anon_vma.
                if self.vmas[from] == Some(true) {
                    self.anon_vma_prepare(to);
                }
                let table = std::mem::replace(&mut self.slots[from], Pmd::None);
                self.slots[to] = table;
                self.ctr.pmd_moves += 1;
            }
            Op::GupFast { slot, idx, n } => {
                let mut pins = Vec::new();
                let mut va = page_va(slot, idx);
                for _ in 0..n {
                    let pfn = slot_at(va).and_then(|(s, i)| match &self.slots[s] {
                        Pmd::Huge { pfn, zero: false } => Some(pfn + u64::from(i)),
                        Pmd::Table(t) => t.get(&i).filter(|p| p.kind != Kind::Zero).map(|p| p.pfn),
                        _ => None,
                    });
                    let Some(pfn) = pfn else { break };
                    pins.push(pfn);
                    va += PAGE_SIZE;
                }
                ck.expect(Res::Pins(pins))?;
            }
            Op::Translate { va } => {
                ck.expect(Res::Translate(Ok(self.translate(va))))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Generation.

fn any_slot() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..REGIONS, 1 => REGIONS..SLOTS]
}

fn idx() -> impl Strategy<Value = u16> {
    prop::sample::select(&IDX[..])
}

fn off() -> impl Strategy<Value = u64> {
    prop::sample::select(&OFFSETS[..])
}

/// `(slot, first page, pages)`: one or two whole regions, a part of one, or a range across the
/// boundary of two; all inside the contiguous slots 0..=4.
fn range() -> impl Strategy<Value = (usize, u32, u32)> {
    let bound = || prop::sample::select(&BOUNDS[..]);
    prop_oneof![
        (0..REGIONS, 1..=2u32).prop_map(|(s, k)| (s, 0, 512 * k)),
        (0..REGIONS, bound(), bound()).prop_map(|(s, a, b)| {
            let (a, b) = (a.min(b).min(511), a.max(b).max(a.min(b).min(511) + 1));
            (s, a, b - a)
        }),
        (0..REGIONS, bound(), bound()).prop_map(|(s, a, b)| (s, a.min(511), 512 - a.min(511) + b)),
    ]
    .prop_filter("inside the contiguous slots", |&(s, a, n)| {
        range_of(s, a, n).1 <= CONTIGUOUS_END
    })
}

/// Mostly one of `targets`, sometimes anything `any` generates.
fn targeted<T: Clone + std::fmt::Debug + 'static>(
    targets: Vec<T>,
    any: BoxedStrategy<T>,
) -> BoxedStrategy<T> {
    if targets.is_empty() {
        any
    } else {
        prop_oneof![3 => prop::sample::select(targets), 1 => any].boxed()
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        prop_oneof![3 => Just(4096usize), 1 => Just(2048usize)]
            .prop_map(Model::new)
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        // Most operations mostly aim at what the model says is there, so that they do
        // something more often than they fail; the rest of the time, at anything.
        let slots = |f: &dyn Fn(usize, &Pmd) -> bool| -> Vec<usize> {
            (0..SLOTS).filter(|&s| f(s, &state.slots[s])).collect()
        };
        let tables = slots(&|_, p| matches!(p, Pmd::Table(_)));
        let huge = slots(&|_, p| matches!(p, Pmd::Huge { .. }));
        let empty = slots(&|_, p| *p == Pmd::None);
        let file_tables =
            slots(&|s, p| matches!(p, Pmd::Table(_)) && state.vma_kind(s) == Some(VmaKind::File));
        let anon_tables =
            slots(&|s, p| matches!(p, Pmd::Table(_)) && state.vma_kind(s) == Some(VmaKind::Anon));
        let region_tables: Vec<usize> = tables.iter().copied().filter(|&s| s < REGIONS).collect();
        let pages: Vec<(usize, u16)> = (0..SLOTS)
            .flat_map(|s| match &state.slots[s] {
                Pmd::Table(t) => t.keys().map(|&i| (s, i)).collect(),
                _ => Vec::new(),
            })
            .collect();
        let file_pages: Vec<(usize, u16)> = pages
            .iter()
            .copied()
            .filter(|&(s, _)| state.vma_kind(s) == Some(VmaKind::File))
            .collect();
        let slot_page = || (any_slot(), idx()).boxed();
        // Regions get their VMA back quickly; spares get one now and then.
        let missing_vmas = state.vmas[..REGIONS].iter().filter(|v| v.is_none()).count() as u32;
        let missing_spares = state.vmas[REGIONS..].iter().filter(|v| v.is_none()).count() as u32;
        let occupied_spares = (REGIONS..SLOTS)
            .filter(|&s| state.slots[s] != Pmd::None)
            .count() as u32;
        let translate_any = prop_oneof![
            0..CONTIGUOUS_END + PMD_SIZE,
            SLOT_VA[5]..SLOT_VA[5] + 2 * PMD_SIZE
        ]
        .boxed();
        let translate_page = targeted(pages.clone(), slot_page())
            .prop_flat_map(|(s, i)| (0..PAGE_SIZE).prop_map(move |o| page_va(s, i) + o))
            .boxed();
        prop_oneof![
            8 => slot_page().prop_map(|(slot, idx)| Op::MapPage { slot, idx }),
            4 => targeted(pages.clone(), slot_page())
                .prop_map(|(slot, idx)| Op::UnmapPage { slot, idx }),
            4 => (targeted(empty, any_slot().boxed()), prop::bool::weighted(0.3))
                .prop_map(|(slot, zero)| Op::MapHuge { slot, zero }),
            2 => targeted(huge.clone(), any_slot().boxed())
                .prop_map(|slot| Op::UnmapHuge { slot }),
            3 => (targeted(huge, any_slot().boxed()), off())
                .prop_map(|(slot, off)| Op::SplitHugePmd { slot, off }),
            3 => (targeted(file_tables, any_slot().boxed()), off())
                .prop_map(|(slot, off)| Op::RetractPageTables { slot, off }),
            1 => (targeted(tables.clone(), any_slot().boxed()), off())
                .prop_map(|(slot, off)| Op::RetractPteTable { slot, off }),
            3 => (targeted(tables, any_slot().boxed()), off())
                .prop_map(|(slot, off)| Op::CollapsePteMappedThp { slot, off }),
            3 => (targeted(anon_tables, any_slot().boxed()), off())
                .prop_map(|(slot, off)| Op::CollapseHugePage { slot, off }),
            4 => targeted(file_pages, slot_page())
                .prop_map(|(slot, idx)| Op::CowFault { slot, idx }),
            4 => (range(), any::<bool>()).prop_map(|((slot, first, pages), reclaim)| {
                Op::MadviseDontneed { slot, first, pages, reclaim }
            }),
            1 => range().prop_map(|(slot, first, pages)| Op::Munmap { slot, first, pages }),
            1 + 8 * missing_vmas => (0..REGIONS).prop_map(|slot| Op::Mmap { slot }),
            1 + missing_spares => (REGIONS..SLOTS).prop_map(|slot| Op::Mmap { slot }),
            2 => (targeted(region_tables, (0..REGIONS).boxed()), REGIONS..SLOTS)
                .prop_map(|(from, to)| Op::MovePmd { from, to }),
            1 + 4 * occupied_spares => (REGIONS..SLOTS, 0..REGIONS)
                .prop_map(|(from, to)| Op::MovePmd { from, to }),
            3 => (targeted(pages, slot_page()), prop_oneof![1..=4u16, 1..=600u16])
                .prop_map(|((slot, idx), n)| Op::GupFast { slot, idx, n }),
            1 => prop_oneof![translate_page, translate_any].prop_map(|va| Op::Translate { va }),
        ]
        .boxed()
    }

    fn preconditions(_state: &Model, _op: &Op) -> bool {
        // Every operation is allowed in every state: a move between VMAs of different kinds,
        // or outside any VMA, is an error the model predicts.
        true
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        let ck = Ck::new(None);
        if let Err(e) = state.step(op, &ck) {
            panic!("reference model: {op:?}: {e}");
        }
        state
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test.

thread_local! {
    /// Outcomes seen on this thread: "operation: outcome" → count.
    static OUTCOMES: RefCell<BTreeMap<String, usize>> = const { RefCell::new(BTreeMap::new()) };
}

struct Sut {
    mmu: Mmu,
    /// The shadow model, which follows what the MMU reported.
    model: Model,
    /// An allocation failed (or may have) in some transition: the reference may be stale.
    diverged: bool,
    steps: u64,
}

/// Counts of every frame kind, indexed by `FrameKind as usize`, and the free aligned runs.
fn census(mmu: &Mmu, frames: usize) -> ([usize; 7], usize) {
    let mut counts = [0usize; 7];
    let mut runs = 0;
    for run in 0..frames / HUGE_FRAMES {
        let mut free = 0;
        for pfn in run * HUGE_FRAMES..(run + 1) * HUGE_FRAMES {
            let kind = mmu.frame_kind(pfn as u64).expect("pfn in range");
            counts[kind as usize] += 1;
            free += usize::from(kind == FrameKind::Free);
        }
        runs += usize::from(free == HUGE_FRAMES);
    }
    (counts, runs)
}

impl Sut {
    fn new(model: &Model) -> Sut {
        let mmu = Mmu::new(MmuConfig {
            frames: model.frames,
            va_limit: VA_LIMIT,
        })
        .expect("valid config");
        for (r, vma) in model.vmas.iter().enumerate() {
            if vma.is_some() {
                mmu.mmap(SLOT_VA[r], PMD_SIZE, KINDS[r]).expect("mmap");
            }
        }
        Sut {
            mmu,
            model: model.clone(),
            diverged: false,
            steps: 0,
        }
    }

    /// Calls the MMU.
    fn call(&self, op: &Op) -> Res {
        let mmu = &self.mmu;
        match *op {
            Op::MapPage { slot, idx } => Res::Pfn(mmu.map_page(page_va(slot, idx))),
            Op::UnmapPage { slot, idx } => Res::Pfn(mmu.unmap_page(page_va(slot, idx))),
            Op::MapHuge { slot, zero: false } => Res::Pfn(mmu.map_huge(SLOT_VA[slot])),
            Op::MapHuge { slot, zero: true } => Res::Pfn(mmu.map_huge_zero(SLOT_VA[slot])),
            Op::UnmapHuge { slot } => Res::Pfn(mmu.unmap_huge(SLOT_VA[slot])),
            Op::SplitHugePmd { slot, off } => Res::Split(mmu.split_huge_pmd(SLOT_VA[slot] + off)),
            Op::RetractPageTables { slot, off } => {
                Res::Num(mmu.retract_page_tables(SLOT_VA[slot] + off))
            }
            Op::RetractPteTable { slot, off } => {
                Res::Num(mmu.retract_pte_table(SLOT_VA[slot] + off))
            }
            Op::CollapsePteMappedThp { slot, off } => {
                Res::Collapse(mmu.collapse_pte_mapped_thp(SLOT_VA[slot] + off))
            }
            Op::CollapseHugePage { slot, off } => {
                Res::Collapse(mmu.collapse_huge_page(SLOT_VA[slot] + off))
            }
            Op::CowFault { slot, idx } => Res::Pfn(mmu.cow_fault(page_va(slot, idx))),
            Op::MadviseDontneed {
                slot,
                first,
                pages,
                reclaim,
            } => {
                let (start, end) = range_of(slot, first, pages);
                Res::Zap(mmu.madvise_dontneed(start, end - start, reclaim))
            }
            Op::Munmap { slot, first, pages } => {
                let (start, end) = range_of(slot, first, pages);
                Res::Num(mmu.munmap(start, end - start))
            }
            Op::Mmap { slot } => Res::Unit(mmu.mmap(SLOT_VA[slot], PMD_SIZE, KINDS[slot])),
            Op::MovePmd { from, to } => Res::Unit(mmu.move_normal_pmd(SLOT_VA[from], SLOT_VA[to])),
            Op::GupFast { slot, idx, n } => {
                let pins = mmu
                    .gup_fast(page_va(slot, idx), usize::from(n))
                    .expect("gup_fast on a valid address");
                let pfns: Vec<u64> = pins.iter().map(|p| p.pfn()).collect();
                // Each pin holds a reference on its folio (a page, or a huge page's head).
                let mapped = self.model.folio_refs();
                let folios = self.model.folios();
                let mut per_folio: BTreeMap<u64, u32> = BTreeMap::new();
                for &p in &pfns {
                    let folio = folios.get(&p).copied().unwrap_or(p);
                    *per_folio.entry(folio).or_default() += 1;
                }
                let base = |f: u64| mapped.get(&f).copied().unwrap_or(0);
                for (&f, &n) in &per_folio {
                    assert_eq!(
                        mmu.page_refs(f),
                        base(f) + n,
                        "{op:?}: references of pinned {f:#x}"
                    );
                }
                drop(pins);
                for &f in per_folio.keys() {
                    assert_eq!(
                        mmu.page_refs(f),
                        base(f),
                        "{op:?}: references of unpinned {f:#x}"
                    );
                }
                Res::Pins(pfns)
            }
            Op::Translate { va } => Res::Translate(mmu.translate(va)),
        }
    }

    /// Runs `op` on the MMU and moves the shadow model along, checking the result.
    fn exec(&mut self, op: &Op) {
        let free = self.mmu.free_frames();
        let runs = census(&self.mmu, self.model.frames).1;
        let res = self.call(op);
        self.mmu.rcu_barrier();
        let obs = Obs {
            res,
            free,
            runs,
            dump: self.mmu.dump(),
            zero: self.mmu.zero_page(),
        };
        let ck = Ck::new(Some(&obs));
        let before = format!("{:?}", self.model);
        if let Err(e) = self.model.step(op, &ck) {
            panic!(
                "step {}: {op:?}: {e}\n  the MMU returned {:?}\n  model before: {before}",
                self.steps, obs.res
            );
        }
        self.diverged |= ck.short.get();
        self.steps += 1;
        let tag = format!("{}: {}", op.name(), obs.res.tag());
        OUTCOMES.with(|o| *o.borrow_mut().entry(tag).or_default() += 1);
    }

    /// Everything the MMU shows agrees with the shadow model.
    fn check(&self) {
        let mmu = &self.mmu;
        let m = &self.model;
        let ctx = format!("after step {} (model: {m:?})", self.steps);
        assert_eq!(
            mmu.audit().violations(),
            0,
            "{ctx}: {:?}",
            mmu.audit().report()
        );
        let problems = mmu.check_tables();
        assert!(problems.is_empty(), "{ctx}: check_tables: {problems:?}");

        // The dump: upper tables, pmds, PTEs and deposits, exactly.
        let dump = mmu.dump();
        let at = |level: u32| dump.entries.iter().filter(move |e| e.0 == level);
        assert_eq!(at(4).count(), m.puds.len(), "{ctx}: PUD tables");
        assert_eq!(at(3).count(), m.pmds.len(), "{ctx}: PMD tables");
        let pmd_tables: BTreeMap<u64, u64> = at(3)
            .filter_map(|&(_, va, raw)| match classify_pmd(raw, m.frames as u64) {
                PmdKind::Table(t) => Some((t, va)),
                _ => None,
            })
            .collect();
        let mut pmds = BTreeMap::new();
        for &(_, va, raw) in at(2) {
            let (slot, _) = slot_at(va).unwrap_or_else(|| panic!("{ctx}: pmd at {va:#x}"));
            let got = match classify_pmd(raw, m.frames as u64) {
                PmdKind::Table(_) => "table".to_string(),
                PmdKind::Huge(pfn) => {
                    assert_eq!(raw, huge_entry(pfn), "{ctx}: huge pmd at {va:#x}");
                    format!("huge {pfn:#x}")
                }
                other => panic!("{ctx}: pmd at {va:#x} is {other:?}"),
            };
            pmds.insert(slot, got);
        }
        let want: BTreeMap<usize, String> = (0..SLOTS)
            .filter_map(|s| match &m.slots[s] {
                Pmd::None => None,
                Pmd::Table(_) => Some((s, "table".to_string())),
                Pmd::Huge { pfn, .. } => Some((s, format!("huge {pfn:#x}"))),
            })
            .collect();
        assert_eq!(pmds, want, "{ctx}: pmds");
        let ptes: BTreeMap<u64, u64> = at(1).map(|&(_, va, raw)| (va, raw)).collect();
        let want: BTreeMap<u64, u64> = (0..SLOTS)
            .flat_map(|s| match &m.slots[s] {
                Pmd::Table(t) => t
                    .iter()
                    .map(|(&i, p)| (page_va(s, i), p.pte().raw()))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        if ptes != want {
            let extra: Vec<_> = ptes.iter().filter(|e| want.get(e.0) != Some(e.1)).collect();
            let missing: Vec<_> = want.iter().filter(|e| ptes.get(e.0) != Some(e.1)).collect();
            panic!("{ctx}: PTEs differ: the MMU has {extra:x?}, the model {missing:x?}");
        }
        let mut deposits: Vec<u64> = dump
            .deposits
            .iter()
            .map(|&(pmdt, i, _)| pmd_tables[&pmdt] + u64::from(i) * PMD_SIZE)
            .collect();
        deposits.sort_unstable();
        let huge: Vec<u64> = (0..SLOTS)
            .filter(|&s| matches!(m.slots[s], Pmd::Huge { .. }))
            .map(|s| SLOT_VA[s])
            .collect();
        assert_eq!(deposits, huge, "{ctx}: deposits");

        // translate, on a sample of every slot (the dump covered every PTE already).
        let extra = (self.steps * 37 % PTES) as u16;
        for s in 0..SLOTS {
            for i in IDX.iter().copied().chain([3, 100, 300, 510, extra]) {
                let va = page_va(s, i) + (u64::from(i) * 0x2a8 + 8) % PAGE_SIZE;
                assert_eq!(
                    mmu.translate(va),
                    Ok(m.translate(va)),
                    "{ctx}: translate {va:#x}"
                );
            }
        }
        assert_eq!(mmu.translate(CONTIGUOUS_END), Ok(None), "{ctx}");

        // Frame census.
        let (counts, _) = census(mmu, m.frames);
        let data = m.data_frames().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let tables = m.slots.iter().filter(|p| **p != Pmd::None).count();
        let mut want = [0usize; 7];
        want[FrameKind::Reserved as usize] = 1;
        want[FrameKind::Pgd as usize] = 1;
        want[FrameKind::Pud as usize] = m.puds.len();
        want[FrameKind::Pmd as usize] = m.pmds.len();
        want[FrameKind::Pte as usize] = tables;
        want[FrameKind::Data as usize] = data.len();
        want[FrameKind::Free as usize] = m.frames - want.iter().sum::<usize>();
        assert_eq!(
            counts, want,
            "{ctx}: frame census [Free, Data, Pte, Pmd, Pud, Pgd, Reserved]"
        );
        assert_eq!(
            mmu.free_frames(),
            counts[FrameKind::Free as usize],
            "{ctx}: free_frames() against the census"
        );
        for &pfn in &data {
            assert_eq!(
                mmu.frame_kind(pfn),
                Some(FrameKind::Data),
                "{ctx}: {pfn:#x}"
            );
        }
        // One reference per mapping, on the folio: a page, or a huge page's head.
        let folio_refs = m.folio_refs();
        for (&folio, &refs) in &folio_refs {
            assert_eq!(
                mmu.page_refs(folio),
                refs,
                "{ctx}: references of {folio:#x}"
            );
        }
        for pmd in &m.slots {
            if let Pmd::Table(t) = pmd {
                for p in t.values().filter(|p| p.kind != Kind::Zero) {
                    let want = folio_refs[&p.folio.unwrap_or(p.pfn)];
                    assert_eq!(
                        mmu.page_refs(p.pfn),
                        want,
                        "{ctx}: references of {:#x}",
                        p.pfn
                    );
                }
            }
        }

        // VMAs and counters.
        for r in 0..SLOTS {
            let got = mmu.find_vma(SLOT_VA[r]).map(|v| {
                assert_eq!(
                    (v.start, v.end, v.kind),
                    (SLOT_VA[r], SLOT_VA[r] + PMD_SIZE, KINDS[r])
                );
                v.anon_vma
            });
            assert_eq!(got, m.vmas[r], "{ctx}: VMA of slot {r} (Some(anon_vma))");
        }
        let s = mmu.stats();
        let got = Ctr {
            anon_pages_lost: s.anon_pages_lost,
            splits: s.splits,
            collapses: s.collapses,
            reclaims: s.reclaims,
            retracts: s.retracts,
            pgtables_freed: s.pgtables_freed,
            pmd_moves: s.pmd_moves,
        };
        assert_eq!(got, m.ctr, "{ctx}: counters");
    }

    /// Unmaps everything and checks that only the upper tables and the zero pages remain.
    fn teardown(mut self) {
        let tag = format!("case: allocation failed: {}", self.diverged);
        OUTCOMES.with(|o| *o.borrow_mut().entry(tag).or_default() += 1);
        for slot in 0..SLOTS {
            self.exec(&Op::Munmap {
                slot,
                first: 0,
                pages: PTES as u32,
            });
        }
        self.mmu.rcu_barrier();
        self.check();
        let m = &self.model;
        assert!(
            m.slots.iter().all(|p| *p == Pmd::None),
            "teardown left mappings: {m:?}"
        );
        let (counts, _) = census(&self.mmu, m.frames);
        let zero = usize::from(m.zero.is_some()) + HUGE_FRAMES * usize::from(m.huge_zero.is_some());
        let kept = 2 + m.puds.len() + m.pmds.len() + zero;
        assert_eq!(counts[FrameKind::Pte as usize], 0, "PTE tables leaked");
        assert_eq!(
            counts[FrameKind::Data as usize],
            zero,
            "data frames leaked: {counts:?}"
        );
        assert_eq!(
            counts[FrameKind::Free as usize],
            m.frames - kept,
            "frames leaked or freed twice: {counts:?}"
        );
        assert_eq!(self.mmu.free_frames(), m.frames - kept);
        if let Some(z) = m.zero {
            // Allocated already: this reads it, and allocates nothing.
            assert_eq!(self.mmu.zero_pfn(), Ok(z));
            assert_eq!(self.mmu.free_frames(), m.frames - kept);
        }
        for va in &SLOT_VA {
            assert_eq!(self.mmu.find_vma(*va), None);
        }
        assert_eq!(self.mmu.audit().violations(), 0);
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(ref_state: &Model) -> Sut {
        Sut::new(ref_state)
    }

    fn apply(mut sut: Sut, ref_state: &Model, op: Op) -> Sut {
        sut.exec(&op);
        if !sut.diverged {
            let (a, b) = (sut.model.normalized(), ref_state.normalized());
            assert_eq!(
                a, b,
                "the reference and the shadow model disagree although no allocation failed"
            );
        }
        sut
    }

    fn check_invariants(sut: &Sut, _ref_state: &Model) {
        sut.check();
    }

    fn teardown(sut: Sut, _ref_state: Model) {
        sut.teardown();
    }
}

fn config() -> Config {
    Config {
        cases: if cfg!(miri) { 4 } else { 512 },
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    /// Random sequences of 1 to 39 operations against the model.
    #[test]
    fn mmu_state_machine(sequential 1..40 => Sut);
}

/// Runs a fixed sequence through the same checks.
fn run_script(frames: usize, ops: &[Op]) {
    let model = Model::new(frames);
    let mut reference = model.clone();
    let mut sut = Sut::new(&model);
    sut.check();
    for op in ops {
        reference = Reference::apply(reference, op);
        sut = <Sut as StateMachineTest>::apply(sut, &reference, op.clone());
        sut.check();
    }
    sut.teardown();
}

/// A fixed sequence through the tricky paths, so that they are known to be reached and
/// predicted: empty tables blocking huge pages, the huge zero page split and zapped in part,
/// CoW setting `anon_vma` (which stops retraction), both collapses, PT_RECLAIM, a move to the far
/// spare and back, munmap of a VMA and of a straddled range, and pins across a huge page.
#[test]
fn scripted_sequence() {
    use Op::*;
    let ops = [
        MapPage { slot: 1, idx: 0 },
        UnmapPage { slot: 1, idx: 0 },
        MapHuge {
            slot: 1,
            zero: false,
        }, // TableInTheWay: the empty table stays
        CollapsePteMappedThp { slot: 1, off: 0 }, // Aborted: empty
        MapPage { slot: 1, idx: 2 },
        MapPage { slot: 1, idx: 255 },
        CollapsePteMappedThp {
            slot: 1,
            off: 0x1234,
        }, // Collapsed
        SplitHugePmd {
            slot: 1,
            off: 0x1000,
        },
        CowFault { slot: 1, idx: 256 },           // anon_vma
        RetractPageTables { slot: 1, off: 0 },    // skipped: anon_vma
        CollapsePteMappedThp { slot: 1, off: 0 }, // Aborted: an anonymous page
        MapHuge {
            slot: 0,
            zero: true,
        },
        MadviseDontneed {
            slot: 0,
            first: 1,
            pages: 2,
            reclaim: true,
        }, // zero split, partial
        CollapseHugePage { slot: 0, off: 7 }, // collapses zero PTEs
        GupFast {
            slot: 0,
            idx: 510,
            n: 5,
        }, // across into region 1's table
        MapPage { slot: 2, idx: 7 },
        MovePmd { from: 2, to: 5 },
        GupFast {
            slot: 5,
            idx: 0,
            n: 600,
        },
        MovePmd { from: 5, to: 2 },
        MapPage { slot: 3, idx: 1 },
        RetractPageTables {
            slot: 3,
            off: PMD_SIZE - 1,
        }, // retracted
        MapPage { slot: 3, idx: 1 },
        MadviseDontneed {
            slot: 3,
            first: 0,
            pages: 512,
            reclaim: true,
        }, // PT_RECLAIM
        Munmap {
            slot: 2,
            first: 1,
            pages: 3,
        }, // PartialVma
        Munmap {
            slot: 2,
            first: 0,
            pages: 512,
        },
        MapPage { slot: 2, idx: 1 }, // no VMA: a file page
        Mmap { slot: 2 },
        Mmap { slot: 2 }, // AlreadyMapped
        CollapseHugePage { slot: 2, off: 0 },
        Translate { va: 0x1234 },
    ];
    run_script(4096, &ops);
    // Huge runs run out.
    let ops: Vec<Op> = (0..SLOTS)
        .map(|slot| MapHuge { slot, zero: false })
        .chain([
            MapPage { slot: 0, idx: 0 },
            CollapseHugePage { slot: 0, off: 0 },
        ])
        .collect();
    run_script(2048, &ops);
}

/// The generator reaches the interesting outcomes (proptest alone would not say).
#[test]
fn generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    OUTCOMES.with(|o| o.borrow_mut().clear());
    let mut runner = TestRunner::deterministic();
    let strategy = Reference::sequential_strategy(1..40);
    for _ in 0..if cfg!(miri) { 2 } else { 120 } {
        let (state, ops, _) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sut = Sut::new(&state);
        let mut reference = state;
        for op in ops {
            reference = Reference::apply(reference, &op);
            sut = <Sut as StateMachineTest>::apply(sut, &reference, op);
        }
        sut.teardown();
    }
    if cfg!(miri) {
        return;
    }
    let seen = OUTCOMES.with(|o| o.borrow().clone());
    if std::env::var_os("STATE_MACHINE_OUTCOMES").is_some() {
        eprintln!("{seen:#?}");
    }
    let expected = [
        "map_page: Ok",
        "map_page: AlreadyMapped",
        "map_page: HugeInTheWay",
        "unmap_page: Ok",
        "unmap_page: NotMapped",
        "map_huge: Ok",
        "map_huge: TableInTheWay",
        "map_huge: OutOfFrames",
        "map_huge_zero: Ok",
        "unmap_huge: Ok",
        "split_huge_pmd: Split",
        "split_huge_pmd: ZeroSplit",
        "retract_page_tables: 1",
        "retract_pte_table: 2",
        "collapse_pte_mapped_thp: Collapsed",
        "collapse_pte_mapped_thp: Aborted",
        "collapse_huge_page: Collapsed",
        "collapse_huge_page: NotInVma",
        "cow_fault: Ok",
        "madvise_dontneed+reclaim: pages:true huge:false reclaimed:true",
        "munmap: 1",
        "munmap: PartialVma",
        "mmap: Ok",
        "move_normal_pmd: Ok",
        "move_normal_pmd: AlreadyMapped",
        "move_normal_pmd: NotInVma",
        "gup_fast: pins:2",
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !seen.contains_key(**k))
        .collect();
    assert!(
        missing.is_empty(),
        "never reached {missing:?}; seen {seen:#?}"
    );
}

/// The checks bite: a model that forgot a page, has a wrong frame or page kind, a wrong
/// `anon_vma` or counter, or an MMU that leaked a frame, each fails `check`; so does a wrong
/// prediction in `exec`.
#[test]
fn checks_catch_a_wrong_model() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut sut = Sut::new(&Model::new(2048));
    sut.exec(&Op::MapPage { slot: 1, idx: 2 });
    sut.exec(&Op::MapHuge {
        slot: 2,
        zero: false,
    });
    sut.check();
    fn page(m: &mut Model) -> &mut Page {
        match &mut m.slots[1] {
            Pmd::Table(t) => t.get_mut(&2).expect("the page"),
            other => panic!("{other:?}"),
        }
    }
    type Tamper = (&'static str, fn(&mut Model));
    let tampers: [Tamper; 6] = [
        ("forgotten page", |m| {
            m.slots[1] = Pmd::Table(BTreeMap::new())
        }),
        ("wrong frame", |m| page(m).pfn += 1),
        ("wrong kind", |m| page(m).kind = Kind::Anon),
        ("wrong huge page", |m| {
            m.slots[2] = Pmd::Huge {
                pfn: 0,
                zero: false,
            }
        }),
        ("wrong anon_vma", |m| m.vmas[1] = Some(true)),
        ("wrong counter", |m| m.ctr.splits += 1),
    ];
    for (what, tamper) in tampers {
        let good = sut.model.clone();
        tamper(&mut sut.model);
        let caught = catch_unwind(AssertUnwindSafe(|| sut.check())).is_err();
        sut.model = good;
        assert!(caught, "check() missed a {what}");
    }
    sut.check();
    // A leaked frame.
    let leaked = sut.mmu.alloc_data_frame().unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| sut.check())).is_err());
    drop(leaked);
    sut.check();
    // A wrong prediction: the shadow thinks region 1's page is gone.
    sut.model.slots[1] = Pmd::Table(BTreeMap::new());
    let op = Op::MapPage { slot: 1, idx: 2 };
    assert!(catch_unwind(AssertUnwindSafe(|| sut.exec(&op))).is_err());
}
