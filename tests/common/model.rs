//! The reference model of the in-memory MMU, shared by `tests/model.rs` and
//! `tests/state_machine.rs`: the address space (six pmd slots, the first four at 0, 2, 4 and
//! 6 MiB), what each slot holds, the VMAs, the counters, and [`Model::step`], which predicts
//! the exact result of every operation and moves to the state after it.
//!
//! The state machine runs it with VMAs over the four regions ([`Model::new`]);
//! `tests/model.rs` without any VMA ([`Model::without_vmas`]), over the four regions only.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use typed_pgtable::Error;
use typed_pgtable::mmu::{
    CollapseOutcome, FrameKind, Mmu, MmuDump, PAGE_SIZE, PMD_SIZE, PmdKind, Pte, SplitOutcome,
    VmaKind, ZapStats, classify_pmd,
};

/// Regions with a VMA.
pub const REGIONS: usize = 4;
/// Pmd slots: the regions, then the spares.
pub const SLOTS: usize = REGIONS + 2;
/// What backs each slot's VMA, when it has one.
pub const KINDS: [VmaKind; SLOTS] = [
    VmaKind::Anon,
    VmaKind::File,
    VmaKind::Anon,
    VmaKind::File,
    VmaKind::Anon,
    VmaKind::File,
];
/// Where each slot starts.
pub const SLOT_VA: [u64; SLOTS] = [
    0,
    PMD_SIZE,
    2 * PMD_SIZE,
    3 * PMD_SIZE,
    4 * PMD_SIZE,
    1 << 39,
];
pub const PTES: u64 = 512;
pub const HUGE_FRAMES: usize = 512;

pub fn page_va(slot: usize, idx: u16) -> u64 {
    SLOT_VA[slot] + u64::from(idx) * PAGE_SIZE
}

/// The slot and PTE index of an address, if it lies in a slot.
pub fn slot_at(va: u64) -> Option<(usize, u16)> {
    (0..SLOTS)
        .find(|&s| SLOT_VA[s] <= va && va < SLOT_VA[s] + PMD_SIZE)
        .map(|s| (s, ((va - SLOT_VA[s]) / PAGE_SIZE) as u16))
}

// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Anon,
    File,
    /// The zero page, mapped special (after a huge zero page split).
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub pfn: u64,
    pub kind: Kind,
    /// The head of the huge folio the page belongs to, for the pages of a split huge page: the
    /// folio's references live on its head, one per PTE, and its 512 frames are freed together
    /// when the last one goes.
    pub folio: Option<u64>,
}

impl Page {
    pub fn pte(self) -> Pte {
        match self.kind {
            Kind::Anon => Pte::anon_page(self.pfn),
            Kind::File => Pte::page(self.pfn),
            Kind::Zero => Pte::special(self.pfn),
        }
    }
}

/// What a pmd slot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Pmd {
    #[default]
    None,
    /// A PTE table (possibly empty) and its present PTEs by index.
    Table(BTreeMap<u16, Page>),
    /// A huge page at `pfn` (the huge zero page if `zero`), with a deposited table.
    Huge { pfn: u64, zero: bool },
}

/// Counters of `MmuStats` the model predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ctr {
    pub anon_pages_lost: u64,
    pub splits: u64,
    pub collapses: u64,
    pub reclaims: u64,
    pub retracts: u64,
    pub pgtables_freed: u64,
    pub pmd_moves: u64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    pub frames: usize,
    pub slots: [Pmd; SLOTS],
    /// `Some(anon_vma)` if the slot has a VMA.
    pub vmas: [Option<bool>; SLOTS],
    /// PUD tables (keyed by `va >> 39`) and PMD tables (`va >> 30`) that exist.
    pub puds: BTreeSet<u64>,
    pub pmds: BTreeSet<u64>,
    pub zero: Option<u64>,
    pub huge_zero: Option<u64>,
    pub ctr: Ctr,
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
pub fn summarize(t: &BTreeMap<u16, Page>) -> String {
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

pub type R<T> = Result<T, String>;

/// What the MMU returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Res {
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
    pub fn err(&self) -> Option<Error> {
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
    pub fn tag(&self) -> String {
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
pub struct Obs {
    pub res: Res,
    /// Free frames before the call.
    pub free: usize,
    /// Free aligned 512-frame runs before the call.
    pub runs: usize,
    /// The state after the call (and a grace period).
    pub dump: MmuDump,
    /// The zero page after the call, if allocated.
    pub zero: Option<u64>,
}

impl Obs {
    /// What `mmu` shows after a call that returned `res`, with the free frames and free runs
    /// counted before it.
    pub fn after(mmu: &Mmu, res: Res, free: usize, runs: usize) -> Obs {
        Obs {
            res,
            free,
            runs,
            dump: mmu.dump(),
            zero: mmu.zero_page(),
        }
    }
}

/// Checks a prediction against the observation, if there is one (the reference has none: it
/// assumes every allocation succeeds, and learns frame number 0).
pub struct Ck<'a> {
    pub obs: Option<&'a Obs>,
    /// An allocation was predicted to fail, or may have.
    pub short: Cell<bool>,
}

impl<'a> Ck<'a> {
    pub fn new(obs: Option<&'a Obs>) -> Self {
        Ck {
            obs,
            short: Cell::new(false),
        }
    }

    /// Whether `alloc_n(n)` succeeds: exact.
    pub fn small(&self, n: usize) -> bool {
        let ok = self.obs.is_none_or(|o| o.free >= n);
        if !ok {
            self.short.set(true);
        }
        ok
    }

    /// Whether `alloc_huge` succeeds after `small_before` frames were allocated in the same
    /// call: each of those spoils at most one free run. `None`: it may go either way.
    pub fn huge(&self, small_before: usize) -> Option<bool> {
        let Some(o) = self.obs else {
            return Some(true);
        };
        if o.runs > small_before {
            return Some(true);
        }
        self.short.set(true);
        if o.runs == 0 { Some(false) } else { None }
    }

    pub fn got(&self) -> Option<&'a Res> {
        self.obs.map(|o| &o.res)
    }

    pub fn expect(&self, want: Res) -> R<()> {
        match self.got() {
            Some(got) if *got != want => Err(format!("expected {want:?}, got {got:?}")),
            _ => Ok(()),
        }
    }

    pub fn expect_err(&self, e: Error) -> R<()> {
        match self.got() {
            Some(got) if got.err() != Some(e) => Err(format!("expected Err({e:?}), got {got:?}")),
            _ => Ok(()),
        }
    }

    pub fn expect_oom(&self) -> R<()> {
        match self.got() {
            Some(got) if !matches!(got.err(), Some(Error::OutOfFrames { .. })) => {
                Err(format!("expected Err(OutOfFrames), got {got:?}"))
            }
            _ => Ok(()),
        }
    }

    /// The frame an `Ok(pfn)` result reported.
    pub fn ok_pfn(&self) -> R<u64> {
        match self.got() {
            None => Ok(0),
            Some(Res::Pfn(Ok(p))) => Ok(*p),
            Some(got) => Err(format!("expected Ok(pfn), got {got:?}")),
        }
    }

    /// Whether the call failed (for outcomes that may go either way).
    pub fn failed(&self) -> bool {
        self.got().is_some_and(|r| r.err().is_some())
    }

    /// The huge page the dump shows at `slot` after the call.
    pub fn huge_after(&self, slot: usize) -> R<u64> {
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
    pub fn zero_after(&self) -> R<u64> {
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
pub enum Op {
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
    /// The operation's name in the outcome tags: the kernel function it runs, which is the
    /// variant's name in snake case, with the flag variants and `move_normal_pmd` spelled out.
    pub fn name(&self) -> String {
        match self {
            Op::MapHuge { zero: true, .. } => "map_huge_zero".into(),
            Op::MadviseDontneed { reclaim: true, .. } => "madvise_dontneed+reclaim".into(),
            Op::MovePmd { .. } => "move_normal_pmd".into(),
            _ => {
                let debug = format!("{self:?}");
                let variant = debug.split([' ', '{']).next().unwrap_or_default();
                snake_case(variant)
            }
        }
    }

    /// `[start, end)` of an op on a page range (`MadviseDontneed`, `Munmap`), by [`range_of`].
    pub fn range(&self) -> (u64, u64) {
        match *self {
            Op::MadviseDontneed {
                slot, first, pages, ..
            }
            | Op::Munmap { slot, first, pages } => range_of(slot, first, pages),
            _ => panic!("{self:?} has no page range"),
        }
    }
}

/// `MapPage` → `map_page`.
fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The part of a range `[start, end)` that lies in one pmd: `[va, next)` inside the
/// pmd-aligned `region`, `whole` when it covers the region entirely.
pub struct PmdSpan {
    pub region: u64,
    pub va: u64,
    pub next: u64,
    pub whole: bool,
}

/// The spans of `[start, end)`, one per pmd it touches, in address order: the pieces
/// `zap_range` hands to `zap_pmd`.
pub fn pmd_spans(start: u64, end: u64) -> impl Iterator<Item = PmdSpan> {
    let first = (start < end).then_some(start & !(PMD_SIZE - 1));
    let regions = std::iter::successors(first, move |r| {
        r.checked_add(PMD_SIZE).filter(|&next| next < end)
    });
    regions.map(move |region| PmdSpan {
        region,
        va: start.max(region),
        next: end.min(region + PMD_SIZE),
        whole: start <= region && region + PMD_SIZE <= end,
    })
}

pub fn range_of(slot: usize, first: u32, pages: u32) -> (u64, u64) {
    let start = SLOT_VA[slot] + u64::from(first) * PAGE_SIZE;
    (start, start + u64::from(pages) * PAGE_SIZE)
}

impl Model {
    pub fn new(frames: usize) -> Model {
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

    /// A model of an MMU without any VMA (`tests/model.rs`): pages map as file pages.
    pub fn without_vmas(frames: usize) -> Model {
        Model {
            vmas: [None; SLOTS],
            ..Model::new(frames)
        }
    }

    /// The frame census the model predicts, indexed by `FrameKind as usize`: the reserved
    /// frame and the PGD, the upper tables, a PTE table per table or huge pmd (its deposit),
    /// every data frame, and the rest free.
    pub fn census_want(&self) -> R<[usize; 7]> {
        let data = self.data_frames()?;
        let tables = self.slots.iter().filter(|p| **p != Pmd::None).count();
        let mut want = [0usize; 7];
        want[FrameKind::Reserved as usize] = 1;
        want[FrameKind::Pgd as usize] = 1;
        want[FrameKind::Pud as usize] = self.puds.len();
        want[FrameKind::Pmd as usize] = self.pmds.len();
        want[FrameKind::Pte as usize] = tables;
        want[FrameKind::Data as usize] = data.len();
        want[FrameKind::Free as usize] = self.frames - want.iter().sum::<usize>();
        Ok(want)
    }

    /// The model without frame numbers (what the reference can know).
    pub fn normalized(&self) -> Model {
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

    pub fn vma_kind(&self, slot: usize) -> Option<VmaKind> {
        self.vmas[slot].is_some().then(|| KINDS[slot])
    }

    pub fn anon_vma_prepare(&mut self, slot: usize) {
        if self.vmas[slot].is_some() {
            self.vmas[slot] = Some(true);
        }
    }

    /// The pmd slot exists (`pmd_offset` is `Some`).
    pub fn has_upper(&self, va: u64) -> bool {
        self.pmds.contains(&(va >> 30))
    }

    pub fn missing_upper(&self, va: u64) -> usize {
        if !self.puds.contains(&(va >> 39)) {
            2
        } else {
            usize::from(!self.pmds.contains(&(va >> 30)))
        }
    }

    pub fn alloc_upper(&mut self, va: u64) {
        self.puds.insert(va >> 39);
        self.pmds.insert(va >> 30);
    }

    pub fn set(&mut self, slot: usize, pmd: Pmd) {
        self.slots[slot] = pmd;
    }

    pub fn table_mut(&mut self, slot: usize) -> &mut BTreeMap<u16, Page> {
        if self.slots[slot] == Pmd::None {
            self.slots[slot] = Pmd::Table(BTreeMap::new());
        }
        match &mut self.slots[slot] {
            Pmd::Table(t) => t,
            other => panic!("model bug: no table at slot {slot}: {other:?}"),
        }
    }

    pub fn translate(&self, va: u64) -> Option<u64> {
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
    pub fn data_frames(&self) -> R<BTreeSet<u64>> {
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

    /// Every mapping of data (the zero pages excepted), as `(pfn, folio, frames)`: a page a PTE
    /// maps is one frame of its folio (or its own folio), a huge pmd maps all 512 frames of
    /// the folio it heads.
    fn data_mappings(&self) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        for pmd in &self.slots {
            match pmd {
                Pmd::Table(t) => out.extend(
                    t.values()
                        .filter(|p| p.kind != Kind::Zero)
                        .map(|p| (p.pfn, p.folio.unwrap_or(p.pfn), 1)),
                ),
                Pmd::Huge { pfn, zero: false } => out.push((*pfn, *pfn, PTES)),
                _ => {}
            }
        }
        out
    }

    /// The references each folio (keyed by its head, or the page itself) must hold: one per
    /// PTE that maps one of its pages, one for a huge pmd.
    pub fn folio_refs(&self) -> BTreeMap<u64, u32> {
        let mut refs = BTreeMap::new();
        for (_, folio, _) in self.data_mappings() {
            *refs.entry(folio).or_default() += 1;
        }
        refs
    }

    /// The folio of every mapped frame (the zero pages excepted).
    pub fn folios(&self) -> BTreeMap<u64, u64> {
        let mut folios = BTreeMap::new();
        for (pfn, folio, frames) in self.data_mappings() {
            folios.extend((pfn..pfn + frames).map(|f| (f, folio)));
        }
        folios
    }

    /// A new data frame must not be in use already.
    pub fn check_fresh(&self, ck: &Ck<'_>, pfn: u64, n: u64) -> R<()> {
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
    pub fn split(&mut self, slot: usize, ck: &Ck<'_>) -> R<Result<SplitOutcome, ()>> {
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
    pub fn zap(&mut self, start: u64, end: u64, reclaim: bool, ck: &Ck<'_>) -> R<ZapStats> {
        let mut st = ZapStats::default();
        for PmdSpan {
            region,
            va,
            next,
            whole,
        } in pmd_spans(start, end)
        {
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
        }
        Ok(st)
    }

    /// Predicts the result of `op`, checks it against the observation if there is one, and
    /// moves to the state after it.
    pub fn step(&mut self, op: &Op, ck: &Ck<'_>) -> R<()> {
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
            Op::MadviseDontneed { reclaim, .. } => {
                let (start, end) = op.range();
                let st = self.zap(start, end, reclaim, ck)?;
                ck.expect(Res::Zap(Ok(st)))?;
            }
            Op::Munmap { .. } => {
                let (start, end) = op.range();
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

/// Counts of every frame kind, indexed by `FrameKind as usize`, and the free aligned runs.
pub fn census(mmu: &Mmu, frames: usize) -> ([usize; 7], usize) {
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

/// Calls the MMU for `op`; `model` (the state before the call) says which references the
/// pins of `gup_fast` must hold.
/// Calls the MMU.
pub fn call(mmu: &Mmu, model: &Model, op: &Op) -> Res {
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
        Op::RetractPteTable { slot, off } => Res::Num(mmu.retract_pte_table(SLOT_VA[slot] + off)),
        Op::CollapsePteMappedThp { slot, off } => {
            Res::Collapse(mmu.collapse_pte_mapped_thp(SLOT_VA[slot] + off))
        }
        Op::CollapseHugePage { slot, off } => {
            Res::Collapse(mmu.collapse_huge_page(SLOT_VA[slot] + off))
        }
        Op::CowFault { slot, idx } => Res::Pfn(mmu.cow_fault(page_va(slot, idx))),
        Op::MadviseDontneed { reclaim, .. } => {
            let (start, end) = op.range();
            Res::Zap(mmu.madvise_dontneed(start, end - start, reclaim))
        }
        Op::Munmap { .. } => {
            let (start, end) = op.range();
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
            let mapped = model.folio_refs();
            let folios = model.folios();
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
