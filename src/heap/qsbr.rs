//! The heap backend's RCU: grace periods detected from reader slots, callbacks run at
//! explicit quiescent points.
//!
//! # The model
//!
//! A *quiescent state* of a reader is a moment at which it holds no reference into RCU-protected
//! memory. A grace period has elapsed once every reader has passed through one since the grace
//! period began. Quiescent-state-based reclamation (QSBR) turns that into bookkeeping: a
//! counter `gp` numbers grace periods, and the domain runs deferred work once it can *see* that
//! every reader has been quiescent since that work's grace period began.
//!
//! Classic QSBR has readers announce quiescent states themselves (the kernel reports one per CPU
//! at every context switch). The [`RcuDomain`] API cannot: a read section is opened by
//! [`read_lock_raw`](RcuDomain::read_lock_raw), which knows neither the thread nor its CPU, and
//! `no_std` has no `thread_local!`. So readers **claim a reader slot** from a fixed array of
//! [`READER_SLOTS`] for each section, as [`rcu::tiny`](crate::rcu::tiny) does, and the slot
//! says whether its reader is quiescent:
//!
//! - a slot is `IDLE` (0) between sections: quiescent;
//! - inside a section it holds the `gp` its section read when it began: quiescent with respect
//!   to every grace period numbered at or below that value, since such a section began after
//!   the grace period did.
//!
//! Slots rather than explicit registration: a registered reader needs a handle that the trait
//! never passes, and a slot per *section* makes nesting free (a nested section claims another
//! slot) and lets a section's token be dropped on any thread's behalf without a thread id. The
//! price is a bound: at most [`READER_SLOTS`] sections can be open at once, and one more panics
//! rather than share a slot or wait for itself.
//!
//! # The algorithm
//!
//! - **Read lock**: claim a free slot (CAS of its `claimed` flag, Acquire), load `gp` (Relaxed),
//!   store it in the slot (Release), `fence(SeqCst)`. **Unlock**: store `IDLE` (Release), then
//!   free the slot (Release).
//! - **Start a grace period** (`call_rcu`, `synchronize`): `fence(SeqCst)`, then
//!   `target = gp.fetch_add(1) + 1`. The grace period `target` has elapsed once every slot is
//!   `IDLE` or holds at least `target`.
//! - **`call_rcu(f)`** starts a grace period and queues `(target, f)` under the queue's
//!   spinlock. It never runs anything.
//! - **[`Qsbr::quiescent`]** (the explicit quiescent point; also `poll`): with the queue locked,
//!   `fence(SeqCst)`, read every slot (Acquire) and take the smallest non-idle value `oldest`;
//!   every queued callback whose `target <= oldest` has had its grace period, so it is taken
//!   out, and run after the queue is unlocked.
//! - **`synchronize`** starts a grace period and spins until it has elapsed.
//! - **`rcu_barrier`** notes the sequence number of the next callback, then runs quiescent
//!   points (yielding between them) until no callback queued before it is left.
//!
//! Why a callback runs only after every section that was open at its `call_rcu` has ended:
//! the remover unlinked the table before `call_rcu`'s fence F<sub>w</sub>, and the reader's
//! section stored its slot before its fence F<sub>r</sub> and reads the slot of the table after
//! it. The SeqCst fences are totally ordered, consistently with happens-before.
//!
//! - If F<sub>r</sub> comes first, the quiescent point's fence (which happens after F<sub>w</sub>,
//!   because the callback was queued before the point locked the queue) comes after F<sub>r</sub>
//!   too, so its slot load sees the reader's value or a later store of the slot; the callback
//!   waits until the slot is idle or newer, that is until an Acquire load reads a Release store
//!   made after the section ended, so the section happens before the callback.
//! - If F<sub>w</sub> comes first, the reader's load of the slot after F<sub>r</sub> sees the
//!   unlink: it never reaches the table.
//! - A slot holding a value `>= target` read `gp` from the `fetch_add` that made `target` (or a
//!   later one): that write follows F<sub>w</sub>, and the load precedes F<sub>r</sub>, so
//!   F<sub>w</sub> precedes F<sub>r</sub>, the second case: the section need not be waited for.
//!
//! Every access is Acquire/Release plus `fence(SeqCst)`, through [`crate::sync`], so that loom
//! can model the domain (it models SeqCst fences exactly, SeqCst accesses only as AcqRel).
//!
//! # Limits
//!
//! `gp` is a `u64` and does not wrap. Callbacks must not call [`Qsbr::quiescent`],
//! [`rcu_barrier`](RcuDomain::rcu_barrier) or [`synchronize`](RcuDomain::synchronize) (the
//! first two serialise on a lock the running callback's caller holds; the third could wait for
//! a section the caller is in). `synchronize` inside a read section of the same domain
//! deadlocks, as in the kernel.

use super::spin::SpinLock;
use crate::bound::RcuBound;
use crate::rcu::{RcuCallback, RcuDomain};
use crate::sync::{AtomicBool, AtomicU64, Ordering, fence, yield_now};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

/// How many read sections of one [`Qsbr`] can be open at once.
pub const READER_SLOTS: usize = 16;

/// The value of a slot with no open section.
const IDLE: u64 = 0;

/// One reader slot.
struct Reader {
    /// Whether an open section owns the slot.
    claimed: AtomicBool,
    /// [`IDLE`] or the `gp` the owning section began with.
    began: AtomicU64,
}

/// A callback waiting for grace period `target`.
struct Pending {
    /// Its place in `call_rcu` order.
    seq: u64,
    target: u64,
    f: RcuCallback,
}

/// The callback queue.
struct Queue {
    /// The `seq` of the next callback.
    next_seq: u64,
    /// Callbacks not yet taken by a quiescent point, in `call_rcu` order.
    items: Vec<Pending>,
}

/// The state shared by a [`Qsbr`] handle and its open sections.
struct Shared {
    /// The grace-period counter; starts at 1 so that [`IDLE`] never names a section.
    gp: AtomicU64,
    readers: [Reader; READER_SLOTS],
    queue: SpinLock<Queue>,
    /// Held by a quiescent point from taking callbacks until they have run, so that a thread
    /// that holds it sees every callback either still queued or finished.
    running: SpinLock<()>,
}

/// A quiescent-state-based RCU domain for `no_std` (see the [module docs](self)).
///
/// ```
/// use typed_pgtable::heap::Qsbr;
/// use typed_pgtable::rcu::RcuDomain;
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
///
/// let rcu = Qsbr::new();
/// let freed = Arc::new(AtomicBool::new(false));
/// let guard = rcu.read_lock();
/// let f = freed.clone();
/// rcu.call_rcu(Box::new(move || f.store(true, Ordering::Release)));
/// assert_eq!(rcu.quiescent(), 0, "a section that was open at call_rcu is still open");
/// drop(guard);
/// assert_eq!(rcu.quiescent(), 1);
/// assert!(freed.load(Ordering::Acquire));
/// ```
pub struct Qsbr {
    shared: Arc<Shared>,
}

impl Qsbr {
    /// A domain with no open section and no queued callback.
    pub fn new() -> Self {
        Qsbr {
            shared: Arc::new(Shared {
                gp: AtomicU64::new(1),
                readers: core::array::from_fn(|_| Reader {
                    claimed: AtomicBool::new(false),
                    began: AtomicU64::new(IDLE),
                }),
                queue: SpinLock::new(Queue {
                    next_seq: 0,
                    items: Vec::new(),
                }),
                running: SpinLock::new(()),
            }),
        }
    }

    /// An explicit quiescent point (`rcu_poll`): runs, on the calling thread, every queued
    /// callback whose grace period has elapsed, and returns how many it ran. Never waits for a
    /// reader.
    pub fn quiescent(&self) -> usize {
        self.shared.quiescent()
    }

    /// Callbacks queued and not yet run.
    pub fn pending(&self) -> usize {
        self.shared.queue.with(|q| q.items.len())
    }
}

impl Shared {
    /// Starts a grace period and returns its number.
    fn start_gp(&self) -> u64 {
        // Orders the caller's unlink before the slot loads that will decide the grace period.
        fence(Ordering::SeqCst);
        self.gp.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The smallest `began` of an open section, or `u64::MAX` if none is open. Every grace
    /// period numbered at or below it has elapsed for the sections seen.
    fn oldest_section(&self) -> u64 {
        self.readers
            .iter()
            .map(|r| r.began.load(Ordering::Acquire))
            .filter(|&b| b != IDLE)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn quiescent(&self) -> usize {
        let _running = self.running.lock();
        self.quiescent_running()
    }

    /// [`quiescent`](Self::quiescent) for a caller that holds `running`.
    fn quiescent_running(&self) -> usize {
        let ready: Vec<Pending> = self.queue.with(|q| {
            // With the queue locked, every callback in it was queued (and its grace period
            // started, F_w) before this fence.
            fence(Ordering::SeqCst);
            let oldest = self.oldest_section();
            let (ready, wait) = core::mem::take(&mut q.items)
                .into_iter()
                .partition(|p| p.target <= oldest);
            q.items = wait;
            ready
        });
        let n = ready.len();
        for p in ready {
            (p.f)();
        }
        n
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The handle and every section (each holds an `Arc`) are gone: no section of this
        // domain can be open, so every queued callback's grace period has elapsed.
        for p in self.queue.with(|q| core::mem::take(&mut q.items)) {
            (p.f)();
        }
    }
}

default_is_new!(Qsbr);

impl fmt::Debug for Qsbr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qsbr")
            .field("gp", &self.shared.gp.load(Ordering::Relaxed))
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// One open read section of a [`Qsbr`] (its [`RcuDomain::ReadState`]).
///
/// # Invariants
/// The section owns reader slot `slot` of `shared`, whose `began` holds the `gp` it read, until
/// it drops. `!Send` and `!Sync`.
pub struct QsbrSection {
    shared: Arc<Shared>,
    slot: usize,
    _not_send: RcuBound,
}

impl Drop for QsbrSection {
    fn drop(&mut self) {
        let r = &self.shared.readers[self.slot];
        // Release: everything the section read happens before a grace period that sees this.
        r.began.store(IDLE, Ordering::Release);
        // Release: the next owner's `began` store comes after our IDLE in the slot's order.
        r.claimed.store(false, Ordering::Release);
    }
}

impl fmt::Debug for QsbrSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QsbrSection")
            .field("slot", &self.slot)
            .finish()
    }
}

// SAFETY: the RCU guarantee (proof in the module docs):
// - a section is a `QsbrSection`, the only owner of its slot from the Acquire CAS of `claimed`
//   to its drop; its `began` is published (Release) before the `fence(SeqCst)` that precedes
//   every read of the section, and cleared (Release) when it ends. The token holds an `Arc`, so
//   the slot outlives the token whatever happens to the handle;
// - a callback runs only in `quiescent`, which takes it only if every slot it saw after a fence
//   that follows the callback's `start_gp` is idle or at least its target, or in
//   `Shared::drop`, when no section exists; `call_rcu` only queues;
// - `synchronize` starts a grace period and returns once every slot was seen idle or at least
//   its number, each slot loaded after the fence of `start_gp`;
// - sections nest: each owns a slot of its own.
unsafe impl RcuDomain for Qsbr {
    type ReadState = QsbrSection;

    /// Claims the first free reader slot and opens a section on it.
    ///
    /// # Panics
    /// If all [`READER_SLOTS`] slots belong to open sections.
    fn read_lock_raw(&self) -> QsbrSection {
        let s = &self.shared;
        for (slot, r) in s.readers.iter().enumerate() {
            if r.claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                r.began
                    .store(s.gp.load(Ordering::Relaxed), Ordering::Release);
                // Orders the slot store before every load of the section.
                fence(Ordering::SeqCst);
                // INVARIANT: the slot is ours and holds the gp we read.
                return QsbrSection {
                    shared: s.clone(),
                    slot,
                    _not_send: PhantomData,
                };
            }
        }
        panic!("Qsbr: all {READER_SLOTS} reader slots belong to open sections");
    }

    fn call_rcu(&self, f: RcuCallback) {
        let s = &self.shared;
        let target = s.start_gp();
        s.queue.with(|q| {
            let seq = q.next_seq;
            q.next_seq += 1;
            q.items.push(Pending { seq, target, f });
        });
    }

    fn synchronize(&self) {
        let s = &self.shared;
        let target = s.start_gp();
        for r in &s.readers {
            loop {
                let began = r.began.load(Ordering::Acquire);
                if began == IDLE || began >= target {
                    break;
                }
                yield_now();
            }
        }
    }

    fn rcu_barrier(&self) {
        let s = &self.shared;
        // Every callback queued before this call has a smaller `seq` (the queue lock orders
        // its push before this read).
        let goal = s.queue.with(|q| q.next_seq);
        loop {
            // Holding `running`, no other thread is between taking callbacks and finishing
            // them: one of ours that is not queued any more has run.
            let running = s.running.lock();
            s.quiescent_running();
            let left = s.queue.with(|q| q.items.iter().any(|p| p.seq < goal));
            drop(running);
            if !left {
                return;
            }
            yield_now();
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::sync::atomic::AtomicUsize;
    use std::thread;
    use std::vec::Vec;

    /// Queues a callback that adds one to `n`.
    fn count_into(rcu: &Qsbr, n: &Arc<AtomicUsize>) {
        let n = n.clone();
        rcu.call_rcu(Box::new(move || {
            n.fetch_add(1, Ordering::AcqRel);
        }));
    }

    /// Queues a callback that counts its runs, and returns the count.
    fn counter(rcu: &Qsbr) -> Arc<AtomicUsize> {
        let n = Arc::new(AtomicUsize::new(0));
        count_into(rcu, &n);
        n
    }

    #[test]
    fn callbacks_wait_for_sections_open_at_call_time_only() {
        let rcu = Qsbr::new();
        let old = rcu.read_lock();
        let n = counter(&rcu);
        let young = rcu.read_lock(); // began after call_rcu: not waited for
        assert_eq!(rcu.quiescent(), 0);
        drop(old);
        assert_eq!(rcu.quiescent(), 1);
        assert_eq!(n.load(Ordering::Acquire), 1);
        drop(young);
        assert_eq!(rcu.pending(), 0);
    }

    #[test]
    fn sections_nest_up_to_the_slot_count() {
        let rcu = Qsbr::new();
        let all: Vec<_> = (0..READER_SLOTS).map(|_| rcu.read_lock()).collect();
        let more = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rcu.read_lock_raw()));
        assert!(more.is_err());
        drop(all);
        rcu.synchronize();
        assert!(std::format!("{rcu:?}").contains("pending: 0"));
    }

    #[test]
    fn barrier_waits_for_a_reader_on_another_thread() {
        let rcu = Arc::new(Qsbr::new());
        let n = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let (rcu, n) = (rcu.clone(), n.clone());
            thread::spawn(move || {
                let _g = rcu.read_lock();
                tx.send(()).unwrap();
                for _ in 0..50 {
                    thread::yield_now();
                }
                assert_eq!(
                    n.load(Ordering::Acquire),
                    0,
                    "callback ran inside a section"
                );
            })
        };
        rx.recv().unwrap();
        count_into(&rcu, &n);
        rcu.rcu_barrier();
        assert_eq!(n.load(Ordering::Acquire), 1);
        reader.join().unwrap();
    }

    #[test]
    fn leftover_callbacks_run_when_the_last_section_ends() {
        let rcu = Qsbr::new();
        let section = rcu.read_lock_raw();
        let n = counter(&rcu);
        drop(rcu);
        assert_eq!(n.load(Ordering::Acquire), 0);
        drop(section);
        assert_eq!(n.load(Ordering::Acquire), 1);
    }
}
