//! An `RcuGuard` moved into another thread.
//!
//! A read section belongs to the thread that opened it: a grace period waits for *that*
//! thread, so closing it elsewhere would let the grace period end early. `RcuGuard` is
//! `!Send`.

use typed_pgtable::mmu::{Mmu, MmuConfig};

fn main() {
    let mmu: &'static Mmu = Box::leak(Box::new(Mmu::new(MmuConfig::default()).unwrap()));
    let guard = mmu.rcu_read_lock();
    std::thread::spawn(move || {
        guard.unlock();
    });
}
