//! Model-based test of the in-memory MMU against a reference model.
//!
//! A tiny address space (8 MiB = four pmds) and a small frame arena make collisions common:
//! small pages are picked from a few PTE indices per 2 MiB region, huge pages take whole
//! regions, and 2048 frames hold at most three huge pages (frame 0 is reserved, so the first
//! 512-frame run is never free). A third of the cases use an arena of 16 to 23 frames and more
//! `map_page`s, so small pages run out as well.
//!
//! After every operation the test checks:
//! - the result against the model's prediction: `Ok` (with the frame or count the model knows)
//!   or the exact [`Error`] value;
//! - that a failing operation left `dump()` unchanged;
//! - that a successful unmap or retract, run inside an RCU read section opened before it, frees
//!   nothing deferred until that section ends (only the never-visible deposit of a huge page is
//!   freed at once), and exactly what the model expects after `rcu_barrier`;
//! - `translate` of every 4 KiB page of the space (at a page-specific offset);
//! - the dump against the model (pmd kinds, huge entries, every PTE, deposits);
//! - frame accounting: the free count the model predicts, and a census of `frame_kind` over
//!   the whole arena (data, PTE tables, upper tables, free).
//!
//! At the end of each case everything is torn down through the API and only the PGD, PUD and
//! PMD tables may remain; the audit must have seen no use-after-free.

mod common;

use common::model::{self as reference, Ck, Model, Obs, Pmd, Res, census};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use typed_pgtable::Error;
use typed_pgtable::mmu::{
    FrameKind, Mmu, MmuConfig, MmuDump, PAGE_SIZE, PMD_SIZE, PmdKind, Pte, huge_entry,
};

const REGIONS: usize = 4;
const VA_LIMIT: u64 = REGIONS as u64 * PMD_SIZE;
const PAGES: u64 = VA_LIMIT / PAGE_SIZE;
/// PTE indices small pages are picked from, per region.
const PTE_IDX: [u64; 5] = [0, 1, 7, 256, 511];
const HUGE_FRAMES: usize = 512;

fn page_va(region: usize, idx: usize) -> u64 {
    region as u64 * PMD_SIZE + PTE_IDX[idx] * PAGE_SIZE
}

fn region_of(va: u64) -> usize {
    (va / PMD_SIZE) as usize
}

#[derive(Debug, Clone)]
enum Op {
    MapPage {
        va: u64,
    },
    UnmapPage {
        va: u64,
    },
    MapHuge {
        region: usize,
    },
    UnmapHuge {
        region: usize,
    },
    /// Any address inside the region: retract masks it.
    Retract {
        region: usize,
        offset: u64,
    },
    /// Any address of the space.
    Translate {
        va: u64,
    },
    /// An operation on an address that is misaligned, out of range or not canonical.
    Bad {
        which: BadOp,
        va: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum BadOp {
    MapPage,
    UnmapPage,
    MapHuge,
    UnmapHuge,
    Retract,
    Translate,
}

fn bad_va() -> impl Strategy<Value = u64> {
    prop_oneof![
        // Misaligned for pages (and for huge pages).
        (0..PAGES, 1..PAGE_SIZE).prop_map(|(p, off)| p * PAGE_SIZE + off),
        // Page-aligned, misaligned for huge pages.
        (0..PAGES).prop_map(|p| p * PAGE_SIZE),
        // Out of range, sometimes aligned to 2 MiB.
        (VA_LIMIT..VA_LIMIT + 4 * PMD_SIZE),
        (4u64..64).prop_map(|r| r * PMD_SIZE),
        // Canonical upper half.
        (0u64..16).prop_map(|k| 0xffff_8000_0000_0000 + k * PMD_SIZE),
        // Not canonical.
        (0u64..16).prop_map(|k| 0x0000_8000_0000_0000 + k * PMD_SIZE),
        any::<u64>(),
    ]
}

/// Operations, with `map_weight` for `map_page` (higher in tiny arenas, so they run dry).
fn op(map_weight: u32) -> impl Strategy<Value = Op> {
    let region = 0..REGIONS;
    let idx = 0..PTE_IDX.len();
    prop_oneof![
        map_weight => (region.clone(), idx.clone()).prop_map(|(r, i)| Op::MapPage { va: page_va(r, i) }),
        4 => (region.clone(), idx).prop_map(|(r, i)| Op::UnmapPage { va: page_va(r, i) }),
        3 => region.clone().prop_map(|region| Op::MapHuge { region }),
        2 => region.clone().prop_map(|region| Op::UnmapHuge { region }),
        2 => (region, 0..PMD_SIZE).prop_map(|(region, offset)| Op::Retract { region, offset }),
        1 => (0..VA_LIMIT).prop_map(|va| Op::Translate { va }),
        1 => (
            prop_oneof![
                Just(BadOp::MapPage),
                Just(BadOp::UnmapPage),
                Just(BadOp::MapHuge),
                Just(BadOp::UnmapHuge),
                Just(BadOp::Retract),
                Just(BadOp::Translate),
            ],
            bad_va()
        )
            .prop_map(|(which, va)| Op::Bad { which, va }),
    ]
}

fn frames() -> impl Strategy<Value = usize> {
    prop_oneof![
        // Around 2048: huge pages run out after three.
        6 => prop_oneof![Just(2048usize), Just(2047), Just(1536), Just(1100)],
        // Tiny: small pages run out too (16 frames hold the upper tables, one PTE table and
        // ten pages).
        3 => 16usize..24,
    ]
}

/// What a pmd of the model holds, as the dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    /// A PTE table, possibly empty.
    Table,
    /// A huge page at this first frame, with a deposited table.
    Huge(u64),
}

/// The views of the shared reference model ([`common::model`], without VMAs) this test
/// predicts from. Its regions are the model's slots 0 to 3, at the same addresses.
trait View {
    fn slot(&self, region: usize) -> Slot;
    fn slots4(&self) -> [Slot; REGIONS];
    /// Small pages: va -> pfn.
    fn pages(&self) -> BTreeMap<u64, u64>;
    fn pages_in(&self, region: usize) -> Vec<u64>;
    /// PUD and PMD tables exist (they are never freed).
    fn upper(&self) -> bool;
    fn missing_upper0(&self) -> usize;
    /// Frames the allocator should have free.
    fn free(&self) -> usize;
}

impl View for Model {
    fn slot(&self, region: usize) -> Slot {
        match &self.slots[region] {
            Pmd::None => Slot::None,
            Pmd::Table(_) => Slot::Table,
            Pmd::Huge { pfn, .. } => Slot::Huge(*pfn),
        }
    }

    fn slots4(&self) -> [Slot; REGIONS] {
        std::array::from_fn(|r| self.slot(r))
    }

    fn pages(&self) -> BTreeMap<u64, u64> {
        (0..REGIONS)
            .flat_map(|r| match &self.slots[r] {
                Pmd::Table(t) => t
                    .iter()
                    .map(|(&i, p)| (reference::page_va(r, i), p.pfn))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn pages_in(&self, region: usize) -> Vec<u64> {
        let lo = region as u64 * PMD_SIZE;
        self.pages()
            .range(lo..lo + PMD_SIZE)
            .map(|(&va, _)| va)
            .collect()
    }

    fn upper(&self) -> bool {
        !self.pmds.is_empty()
    }

    fn missing_upper0(&self) -> usize {
        self.missing_upper(0)
    }

    fn free(&self) -> usize {
        self.census_want()
            .map_or(0, |c| c[FrameKind::Free as usize])
    }
}

/// The address checks every operation makes first, written from the documented rules:
/// canonical, then aligned, then inside the configured space.
fn check_va(va: u64, align: u64) -> Result<(), Error> {
    let top = va >> 47;
    if top != 0 && top != (1 << 17) - 1 {
        return Err(Error::NonCanonical { addr: va });
    }
    if va % align != 0 {
        return Err(Error::Misaligned { addr: va, align });
    }
    if va >= VA_LIMIT {
        return Err(Error::OutOfRange {
            addr: va,
            limit: VA_LIMIT,
        });
    }
    Ok(())
}

/// Number of aligned 512-frame runs that are entirely free.
fn free_huge_runs(mmu: &Mmu, frames: usize) -> usize {
    census(mmu, frames).1
}

fn err_str<T: std::fmt::Debug>(ctx: &str, what: T) -> TestCaseError {
    TestCaseError::fail(format!("{ctx}: {what:?}"))
}

/// One MMU call on an address, with its result widened to `u64`.
type MmuCall = fn(&Mmu, u64) -> Result<u64, Error>;

struct Harness {
    mmu: Mmu,
    model: Model,
}

impl Harness {
    fn new(frames: usize) -> Harness {
        let mmu = Mmu::new(MmuConfig {
            frames,
            va_limit: VA_LIMIT,
        })
        .expect("valid config");
        Harness {
            mmu,
            model: Model::without_vmas(frames),
        }
    }

    /// Moves the reference model along a call that succeeded with `res`, with the free frames
    /// and free runs seen before it: the model checks the result too.
    fn follow(
        &mut self,
        ctx: &str,
        op: reference::Op,
        res: Res,
        free: usize,
        runs: usize,
    ) -> Result<(), TestCaseError> {
        let obs = Obs::after(&self.mmu, res, free, runs);
        self.model
            .step(&op, &Ck::new(Some(&obs)))
            .map_err(|e| err_str(&format!("{ctx}: reference model"), e))
    }

    /// Runs a call that the model says must fail with `expected`, and checks the MMU is
    /// unchanged.
    fn expect_err<T: std::fmt::Debug>(
        &self,
        ctx: &str,
        expected: Error,
        f: impl FnOnce(&Mmu) -> Result<T, Error>,
    ) -> Result<(), TestCaseError> {
        let before = self.mmu.dump();
        let got = f(&self.mmu);
        self.mmu.rcu_barrier();
        prop_assert_eq!(
            got.as_ref().err(),
            Some(&expected),
            "{}: got {:?}",
            ctx,
            got
        );
        let after = self.mmu.dump();
        prop_assert_eq!(before, after, "{}: failing call changed the MMU", ctx);
        Ok(())
    }

    /// Runs a successful freeing call inside an RCU read section opened before it: while the
    /// section is open only `now` frames may come back; then the section ends and the deferred
    /// frees run.
    fn under_reader(
        &self,
        ctx: &str,
        now: usize,
        f: impl FnOnce(&Mmu) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let free = self.mmu.free_frames();
        // The reader sits in its section on its own thread (an operation that takes the mmap
        // lock inside a read section of its own thread is what the lock checker refuses).
        let (entered, leave) = (Barrier::new(2), Barrier::new(2));
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let _reader = self.mmu.rcu_read_lock();
                entered.wait();
                leave.wait();
            });
            entered.wait();
            // The reader leaves whatever happens here (a failed check, a panic).
            struct Leave<'b>(&'b Barrier);
            impl Drop for Leave<'_> {
                fn drop(&mut self) {
                    self.0.wait();
                }
            }
            let _leave = Leave(&leave);
            f(&self.mmu)?;
            // Give the collector every chance to run callbacks it must not run yet.
            for _ in 0..64 {
                drop(self.mmu.rcu_read_lock());
            }
            prop_assert_eq!(
                self.mmu.free_frames(),
                free + now,
                "{}: frames freed inside a read section that predates the unmap",
                ctx
            );
            Ok(())
        });
        self.mmu.rcu_barrier();
        result
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let ctx = format!("{op:?}");
        let ctx = ctx.as_str();
        match *op {
            Op::MapPage { va } => {
                let region = region_of(va);
                let m = &self.model;
                let free = m.free();
                let predicted = match m.slot(region) {
                    Slot::Huge(_) => Err(Error::HugeInTheWay { addr: va }),
                    Slot::Table if m.pages().contains_key(&va) => {
                        Err(Error::AlreadyMapped { addr: va })
                    }
                    slot => {
                        let need = m.missing_upper0() + usize::from(slot == Slot::None) + 1;
                        if free < need {
                            Err(Error::OutOfFrames { needed: need, free })
                        } else {
                            Ok(need)
                        }
                    }
                };
                match predicted {
                    Err(e) => self.expect_err(ctx, e, |mmu| mmu.map_page(va))?,
                    Ok(need) => {
                        let pfn = self
                            .mmu
                            .map_page(va)
                            .map_err(|e| err_str(&format!("{ctx}: unexpected"), e))?;
                        prop_assert!(
                            !self.model.pages().values().any(|&p| p == pfn),
                            "{}: frame {:#x} handed out twice",
                            ctx,
                            pfn
                        );
                        prop_assert_eq!(self.mmu.frame_kind(pfn), Some(FrameKind::Data));
                        let (slot, idx) = reference::slot_at(va).expect("a region's page");
                        let op = reference::Op::MapPage { slot, idx };
                        self.follow(ctx, op, Res::Pfn(Ok(pfn)), free, 0)?;
                        prop_assert_eq!(self.model.free(), free - need, "{}", ctx);
                    }
                }
            }
            Op::UnmapPage { va } => {
                let region = region_of(va);
                let m = &self.model;
                match (m.slot(region), m.pages().get(&va)) {
                    (Slot::Huge(_), _) => {
                        self.expect_err(ctx, Error::HugeInTheWay { addr: va }, |mmu| {
                            mmu.unmap_page(va)
                        })?
                    }
                    (_, None) => self
                        .expect_err(ctx, Error::NotMapped { addr: va }, |mmu| mmu.unmap_page(va))?,
                    (_, Some(&pfn)) => {
                        // The data frame comes back only after a grace period: a reader
                        // that was inside a read section at the unmap may still use it.
                        self.under_reader(ctx, 0, |mmu| {
                            prop_assert_eq!(mmu.unmap_page(va), Ok(pfn), "{}", ctx);
                            Ok(())
                        })?;
                        let free = self.model.free();
                        let (slot, idx) = reference::slot_at(va).expect("a region's page");
                        let op = reference::Op::UnmapPage { slot, idx };
                        self.follow(ctx, op, Res::Pfn(Ok(pfn)), free, 0)?;
                        // The (possibly now empty) PTE table stays.
                        prop_assert_eq!(self.model.free(), free + 1, "{}", ctx);
                    }
                }
            }
            Op::MapHuge { region } => {
                let va = region as u64 * PMD_SIZE;
                let m = &self.model;
                let free = m.free();
                match m.slot(region) {
                    Slot::Huge(_) => {
                        self.expect_err(ctx, Error::AlreadyMapped { addr: va }, |mmu| {
                            mmu.map_huge(va)
                        })?
                    }
                    Slot::Table => {
                        self.expect_err(ctx, Error::TableInTheWay { addr: va }, |mmu| {
                            mmu.map_huge(va)
                        })?
                    }
                    Slot::None => {
                        // Reservation: missing upper tables plus the deposit; then a run.
                        let k = m.missing_upper0() + 1;
                        if free < k {
                            let e = Error::OutOfFrames { needed: k, free };
                            self.expect_err(ctx, e, |mmu| mmu.map_huge(va))?;
                            return Ok(());
                        }
                        let run_missing = Error::OutOfFrames {
                            needed: HUGE_FRAMES,
                            free: free - k,
                        };
                        let runs = free_huge_runs(&self.mmu, m.frames);
                        if runs == 0 || free < k + HUGE_FRAMES {
                            self.expect_err(ctx, run_missing, |mmu| mmu.map_huge(va))?;
                            return Ok(());
                        }
                        let before = self.mmu.dump();
                        match self.mmu.map_huge(va) {
                            Ok(pfn) => {
                                prop_assert_eq!(pfn % HUGE_FRAMES as u64, 0, "{}", ctx);
                                prop_assert!(pfn as usize + HUGE_FRAMES <= m.frames);
                                let op = reference::Op::MapHuge {
                                    slot: region,
                                    zero: false,
                                };
                                self.follow(ctx, op, Res::Pfn(Ok(pfn)), free, runs)?;
                                prop_assert_eq!(self.model.slot(region), Slot::Huge(pfn));
                                prop_assert_eq!(self.model.free(), free - k - HUGE_FRAMES);
                            }
                            // With exactly one free run, the reservation may have taken a
                            // frame of it; with two or more it cannot (it takes at most three
                            // consecutive free frames).
                            Err(e) if runs == 1 && e == run_missing => {
                                self.mmu.rcu_barrier();
                                prop_assert_eq!(before, self.mmu.dump(), "{}", ctx);
                            }
                            Err(e) => {
                                return Err(err_str(
                                    &format!("{ctx}: unexpected with {runs} free runs"),
                                    e,
                                ));
                            }
                        }
                    }
                }
            }
            Op::UnmapHuge { region } => {
                let va = region as u64 * PMD_SIZE;
                match self.model.slot(region) {
                    Slot::None => self
                        .expect_err(ctx, Error::NotMapped { addr: va }, |mmu| mmu.unmap_huge(va))?,
                    Slot::Table => {
                        self.expect_err(ctx, Error::TableInTheWay { addr: va }, |mmu| {
                            mmu.unmap_huge(va)
                        })?
                    }
                    Slot::Huge(pfn) => {
                        // The deposited table was never visible: freed at once. The data
                        // waits for the grace period.
                        self.under_reader(ctx, 1, |mmu| {
                            prop_assert_eq!(mmu.unmap_huge(va), Ok(pfn), "{}", ctx);
                            Ok(())
                        })?;
                        let free = self.model.free();
                        let op = reference::Op::UnmapHuge { slot: region };
                        self.follow(ctx, op, Res::Pfn(Ok(pfn)), free, 0)?;
                        prop_assert_eq!(self.model.slot(region), Slot::None);
                        prop_assert_eq!(self.model.free(), free + HUGE_FRAMES + 1);
                    }
                }
            }
            Op::Retract { region, offset } => {
                let va = region as u64 * PMD_SIZE + offset;
                match self.model.slot(region) {
                    Slot::None => self.expect_err(ctx, Error::NotMapped { addr: va }, |mmu| {
                        mmu.retract_pte_table(va)
                    })?,
                    Slot::Huge(_) => {
                        self.expect_err(ctx, Error::HugeInTheWay { addr: va }, |mmu| {
                            mmu.retract_pte_table(va)
                        })?
                    }
                    Slot::Table => {
                        let gone = self.model.pages_in(region);
                        // Lockless walkers may be inside the table: it and its pages wait for
                        // the grace period.
                        self.under_reader(ctx, 0, |mmu| {
                            let n = mmu.retract_pte_table(va);
                            prop_assert_eq!(n, Ok(gone.len()), "{}", ctx);
                            Ok(())
                        })?;
                        let free = self.model.free();
                        let op = reference::Op::RetractPteTable {
                            slot: region,
                            off: offset,
                        };
                        self.follow(ctx, op, Res::Num(Ok(gone.len())), free, 0)?;
                        prop_assert_eq!(self.model.slot(region), Slot::None);
                        prop_assert_eq!(self.model.free(), free + gone.len() + 1);
                    }
                }
            }
            Op::Translate { va } => {
                prop_assert_eq!(
                    self.mmu.translate(va),
                    Ok(self.model.translate(va)),
                    "{}",
                    ctx
                );
            }
            Op::Bad { which, va } => {
                let (check, call): (_, MmuCall) = match which {
                    BadOp::MapPage => (check_va(va, PAGE_SIZE), |m, v| m.map_page(v)),
                    BadOp::UnmapPage => (check_va(va, PAGE_SIZE), |m, v| m.unmap_page(v)),
                    BadOp::MapHuge => (check_va(va, PMD_SIZE), |m, v| m.map_huge(v)),
                    BadOp::UnmapHuge => (check_va(va, PMD_SIZE), |m, v| m.unmap_huge(v)),
                    // These two take any address in the page (resp. 2 MiB range) and report
                    // the caller's own address.
                    BadOp::Retract => (check_va(va, 1), |m, v| {
                        m.retract_pte_table(v).map(|n| n as u64)
                    }),
                    BadOp::Translate => (check_va(va, 1), |m, v| {
                        m.translate(v).map(|p| p.unwrap_or(u64::MAX))
                    }),
                };
                match check {
                    Err(e) => self.expect_err(ctx, e, |mmu| call(mmu, va))?,
                    Ok(()) => {
                        // A valid address after all (e.g. a page-aligned one): replay as the
                        // corresponding valid operation.
                        let region = region_of(va);
                        let valid = match which {
                            BadOp::Translate => Op::Translate { va },
                            BadOp::Retract => Op::Retract {
                                region,
                                offset: va % PMD_SIZE,
                            },
                            BadOp::MapHuge => Op::MapHuge { region },
                            BadOp::UnmapHuge => Op::UnmapHuge { region },
                            BadOp::MapPage => Op::MapPage { va },
                            BadOp::UnmapPage => Op::UnmapPage { va },
                        };
                        return self.apply(&valid);
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything the MMU shows agrees with the model.
    fn check(&self) -> Result<(), TestCaseError> {
        let mmu = &self.mmu;
        let m = &self.model;
        let free = m.free();
        let pages = m.pages();
        let upper = m.upper();
        prop_assert_eq!(mmu.free_frames(), free, "free frames (model: {:?})", m);

        // translate, every page of the space, at an offset that varies with the page.
        for p in 0..PAGES {
            let va = p * PAGE_SIZE + (p * 0x2a8) % PAGE_SIZE;
            prop_assert_eq!(
                mmu.translate(va),
                Ok(m.translate(va)),
                "translate {:#x}",
                va
            );
        }

        // The dump, entry by entry.
        let dump: MmuDump = mmu.dump();
        prop_assert_eq!(dump.free_frames, free);
        let at = |level: u32| dump.entries.iter().filter(move |e| e.0 == level);
        prop_assert_eq!(at(4).count(), usize::from(upper), "PGD entries");
        prop_assert_eq!(at(3).count(), usize::from(upper), "PUD entries");
        let mut pte_tables = BTreeSet::new();
        let mut pmd_slots = [Slot::None; REGIONS];
        for &(_, va, raw) in at(2) {
            prop_assert!(va < VA_LIMIT, "pmd entry {:#x} out of space", va);
            let r = region_of(va);
            pmd_slots[r] = match typed_pgtable::mmu::classify_pmd(raw, m.frames as u64) {
                PmdKind::Table(t) => {
                    pte_tables.insert(t);
                    Slot::Table
                }
                PmdKind::Huge(pfn) => {
                    prop_assert_eq!(raw, huge_entry(pfn));
                    Slot::Huge(pfn)
                }
                other => return Err(err_str("pmd entry", other)),
            };
        }
        prop_assert_eq!(pmd_slots, m.slots4(), "pmd slots");
        let ptes: BTreeMap<u64, u64> = at(1).map(|&(_, va, raw)| (va, raw)).collect();
        let expected: BTreeMap<u64, u64> = pages
            .iter()
            .map(|(&va, &pfn)| (va, Pte::page(pfn).raw()))
            .collect();
        prop_assert_eq!(ptes, expected, "PTEs");
        let huge: Vec<usize> = (0..REGIONS)
            .filter(|&r| matches!(m.slot(r), Slot::Huge(_)))
            .collect();
        let mut deposited: Vec<usize> = dump.deposits.iter().map(|d| d.1 as usize).collect();
        deposited.sort_unstable();
        prop_assert_eq!(deposited, huge.clone(), "deposits");
        for d in &dump.deposits {
            prop_assert!(
                pte_tables.insert(d.2),
                "deposit {:#x} is also a live table",
                d.2
            );
        }

        // Frame census.
        let mut census: BTreeMap<String, usize> = BTreeMap::new();
        for pfn in 0..m.frames as u64 {
            let kind = mmu.frame_kind(pfn).expect("pfn in range");
            *census.entry(format!("{kind:?}")).or_default() += 1;
        }
        let tables = m.slots4().iter().filter(|s| **s == Slot::Table).count();
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        let mut put = |k: FrameKind, n: usize| {
            if n > 0 {
                want.insert(format!("{k:?}"), n);
            }
        };
        put(FrameKind::Reserved, 1);
        put(FrameKind::Pgd, 1);
        put(FrameKind::Pud, usize::from(upper));
        put(FrameKind::Pmd, usize::from(upper));
        put(FrameKind::Pte, tables + huge.len());
        put(FrameKind::Data, pages.len() + HUGE_FRAMES * huge.len());
        put(FrameKind::Free, free);
        prop_assert_eq!(census, want, "frame census");
        for t in &pte_tables {
            prop_assert_eq!(mmu.frame_kind(*t), Some(FrameKind::Pte));
        }
        for pfn in pages.values() {
            prop_assert_eq!(mmu.frame_kind(*pfn), Some(FrameKind::Data));
        }
        Ok(())
    }

    /// Unmaps everything through the API and checks that only the upper tables remain.
    fn teardown(&mut self) -> Result<(), TestCaseError> {
        for r in 0..REGIONS {
            let va = r as u64 * PMD_SIZE;
            match self.model.slot(r) {
                Slot::Huge(pfn) => {
                    prop_assert_eq!(self.mmu.unmap_huge(va), Ok(pfn));
                    let op = reference::Op::UnmapHuge { slot: r };
                    self.follow("teardown", op, Res::Pfn(Ok(pfn)), 0, 0)?;
                }
                Slot::Table => {
                    for page in self.model.pages_in(r) {
                        let pfn = self.model.pages()[&page];
                        prop_assert_eq!(self.mmu.unmap_page(page), Ok(pfn));
                        let (slot, idx) = reference::slot_at(page).expect("a region's page");
                        let op = reference::Op::UnmapPage { slot, idx };
                        self.follow("teardown", op, Res::Pfn(Ok(pfn)), 0, 0)?;
                    }
                    prop_assert_eq!(self.mmu.retract_pte_table(va), Ok(0));
                    let op = reference::Op::RetractPteTable { slot: r, off: 0 };
                    self.follow("teardown", op, Res::Num(Ok(0)), 0, 0)?;
                }
                Slot::None => {}
            }
            prop_assert_eq!(self.model.slot(r), Slot::None);
        }
        self.mmu.rcu_barrier();
        let upper = 2 * usize::from(self.model.upper());
        prop_assert_eq!(
            self.mmu.free_frames(),
            self.model.frames - 2 - upper,
            "frames leaked after teardown"
        );
        prop_assert_eq!(self.model.free(), self.model.frames - 2 - upper);
        self.check()?;
        // A second teardown finds nothing and frees nothing.
        let before = self.mmu.dump();
        for r in 0..REGIONS {
            let va = r as u64 * PMD_SIZE;
            prop_assert_eq!(self.mmu.unmap_huge(va), Err(Error::NotMapped { addr: va }));
            prop_assert_eq!(
                self.mmu.retract_pte_table(va),
                Err(Error::NotMapped { addr: va })
            );
        }
        self.mmu.rcu_barrier();
        prop_assert_eq!(before, self.mmu.dump());
        prop_assert_eq!(
            self.mmu.audit().violations(),
            0,
            "{:?}",
            self.mmu.audit().report()
        );
        Ok(())
    }
}

fn run(frames: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(frames);
    h.check()?;
    for (i, op) in ops.iter().enumerate() {
        h.apply(op)
            .map_err(|e| TestCaseError::fail(format!("step {i}: {e}")))?;
        h.check()
            .map_err(|e| TestCaseError::fail(format!("after step {i} ({op:?}): {e}")))?;
    }
    h.teardown()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mmu_matches_model(
        (frames, ops) in frames().prop_flat_map(|frames| {
            let map_weight = if frames < 64 { 16 } else { 6 };
            (Just(frames), prop::collection::vec(op(map_weight), 1..40))
        })
    ) {
        run(frames, &ops)?;
    }
}

/// A fixed sequence that exercises every kind of outcome, so the model itself is known to
/// reach them (proptest alone would not say).
#[test]
fn model_reaches_every_outcome() {
    use Op::*;
    let ops = [
        MapPage { va: 0 },
        MapPage { va: 0 },        // AlreadyMapped
        UnmapPage { va: 0x1000 }, // NotMapped
        MapHuge { region: 0 },    // TableInTheWay
        UnmapPage { va: 0 },
        MapHuge { region: 0 }, // TableInTheWay: the empty table stays
        Retract {
            region: 0,
            offset: 0x1234,
        },
        MapHuge { region: 0 },
        MapPage { va: 0x7000 },   // HugeInTheWay
        UnmapPage { va: 0x7000 }, // HugeInTheWay
        Retract {
            region: 0,
            offset: 5,
        }, // HugeInTheWay
        MapHuge { region: 1 },
        MapHuge { region: 2 },
        MapHuge { region: 3 }, // OutOfFrames: only three runs
        MapPage {
            va: 3 * PMD_SIZE + 0x1f_f000,
        },
        MapPage {
            va: 3 * PMD_SIZE + 0x10_0000,
        },
        Retract {
            region: 3,
            offset: 0,
        },
        UnmapHuge { region: 3 }, // NotMapped
        UnmapHuge { region: 1 },
        Translate { va: 0x1234 },
        Bad {
            which: BadOp::MapPage,
            va: 0x1001,
        },
        Bad {
            which: BadOp::Translate,
            va: 0x0000_8000_0000_0123,
        },
        Bad {
            which: BadOp::Retract,
            va: VA_LIMIT + 17,
        },
    ];
    run(2048, &ops).unwrap();
    // Tiny arena: small pages run out.
    let ops: Vec<Op> = (0..4)
        .flat_map(|r| (0..PTE_IDX.len()).map(move |i| MapPage { va: page_va(r, i) }))
        .collect();
    run(16, &ops).unwrap();
}

/// The model must be able to fail: a wrong prediction is caught.
#[test]
fn model_detects_a_wrong_prediction() {
    let mut h = Harness::new(2048);
    h.apply(&Op::MapPage { va: page_va(1, 3) }).unwrap();
    h.check().unwrap();
    // Pretend the page is gone: translate, the dump and the census all disagree.
    let good = h.model.clone();
    h.model.slots[1] = Pmd::Table(BTreeMap::new());
    assert!(h.check().is_err());
    h.model = good.clone();
    h.check().unwrap();
    // A wrong count of free frames is caught: the model thinks a PMD table more exists.
    h.model.pmds.insert(1 << 20);
    assert!(h.check().is_err());
    h.model = good;
    h.check().unwrap();
    // A leaked frame is caught.
    let leaked = h.mmu.alloc_data_frame().unwrap();
    assert!(h.check().is_err());
    drop(leaked);
    h.check().unwrap();
    // A wrong error prediction is caught.
    assert!(
        h.expect_err("x", Error::NotMapped { addr: 0 }, |mmu| mmu
            .map_page(0x1000))
            .is_err()
    );
}

/// A long pseudo-random run with a concurrent lockless reader: the audit must count checks and
/// find no page-table use-after-free.
#[test]
fn audit_clean_after_random_run() {
    let mmu = Mmu::new(MmuConfig {
        frames: 4096,
        va_limit: VA_LIMIT,
    })
    .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rng = common::rng::Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seen = 0u64;
            let mut va = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                va = (va + 0x3_1000 + 0x18) % VA_LIMIT;
                if mmu.translate(va).unwrap().is_some() {
                    seen += 1;
                }
            }
            seen
        });
        for _ in 0..4000 {
            let r = rng.next();
            let region = (r % REGIONS as u64) as usize;
            let idx = ((r >> 8) % PTE_IDX.len() as u64) as usize;
            let va = page_va(region, idx);
            let base = region as u64 * PMD_SIZE;
            let res = match (r >> 16) % 10 {
                0..=3 => mmu.map_page(va).map(|_| ()),
                4..=5 => mmu.unmap_page(va).map(|_| ()),
                6 => mmu.map_huge(base).map(|_| ()),
                7 => mmu.unmap_huge(base).map(|_| ()),
                _ => mmu
                    .retract_pte_table(base + (r >> 24) % PMD_SIZE)
                    .map(|_| ()),
            };
            let key = match res {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("{e:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string(),
            };
            *outcomes.entry(key).or_default() += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = reader.join().unwrap();
        assert!(seen > 0, "the reader never saw a mapping");
    });
    mmu.rcu_barrier();
    for key in [
        "ok",
        "AlreadyMapped",
        "NotMapped",
        "HugeInTheWay",
        "TableInTheWay",
    ] {
        assert!(
            outcomes.contains_key(key),
            "{key} never happened: {outcomes:?}"
        );
    }
    assert!(
        mmu.audit().checks() > 1000,
        "the audit checked almost nothing"
    );
    assert_eq!(mmu.audit().violations(), 0, "{:?}", mmu.audit().report());
    let d = mmu.dump();
    assert_eq!(d.free_frames, mmu.free_frames());
}
