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

mod common;

use common::model::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use std::cell::RefCell;
use std::collections::BTreeMap;
use typed_pgtable::mmu::{
    FrameKind, Mmu, MmuConfig, PAGE_SIZE, PMD_SIZE, PmdKind, VmaKind, classify_pmd, huge_entry,
};

/// One past the contiguous slots 0..=4.
const CONTIGUOUS_END: u64 = 5 * PMD_SIZE;
const VA_LIMIT: u64 = 1 << 40;
/// PTE indices the page operations use.
const IDX: [u16; 6] = [0, 1, 2, 255, 256, 511];
/// Page boundaries range operations start or end at.
const BOUNDS: [u32; 9] = [0, 1, 2, 255, 256, 257, 510, 511, 512];
/// Offsets inside a region for the operations that take any address of it.
const OFFSETS: [u64; 4] = [0, 0x1000, 0x1_2345, PMD_SIZE - 1];

// ---------------------------------------------------------------------------------------------
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

    /// Runs `op` on the MMU and moves the shadow model along, checking the result.
    fn exec(&mut self, op: &Op) {
        let free = self.mmu.free_frames();
        let runs = census(&self.mmu, self.model.frames).1;
        let res = call(&self.mmu, &self.model, op);
        self.mmu.rcu_barrier();
        let obs = Obs::after(&self.mmu, res, free, runs);
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
        let want = m.census_want().unwrap_or_else(|e| panic!("{ctx}: {e}"));
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
