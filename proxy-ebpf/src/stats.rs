//! Per-Service traffic counters: by frontend (revNAT id) and by (frontend,
//! backend) pair. Shared by all CPUs, so every add is atomic; a missing
//! entry only loses a count, never a packet.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::BPF_NOEXIST;
use proxy_common::BackendStatKey;

use crate::maps::{BACKEND_STATS, SERVICE_STATS};

/// Adds `n` to counter `index` (a `svc_stat` index) of frontend `rev_nat_id`.
#[inline(always)]
pub fn service(rev_nat_id: u16, index: usize, n: u64) {
    let Some(stats) = SERVICE_STATS.get_ptr_mut(u32::from(rev_nat_id)) else {
        return;
    };
    // SAFETY: the pointer is the array's value for this run; `index` is a
    // constant below the array's length, so the field is inside it.
    let Some(slot) = (unsafe { (*stats).counts.get_mut(index) }) else {
        return;
    };
    add(core::ptr::from_mut(slot), n);
}

/// Counts one new connection of frontend `rev_nat_id` to `backend_id`.
#[inline(always)]
pub fn backend(rev_nat_id: u16, backend_id: u32) {
    let key = BackendStatKey {
        rev_nat_id: u32::from(rev_nat_id),
        backend_id,
    };
    let mut slot = BACKEND_STATS.get_ptr_mut(key);
    if slot.is_none() {
        // First connection of the pair: another CPU may create it at once,
        // which NOEXIST leaves to it.
        let _ = BACKEND_STATS.insert(key, 0, u64::from(BPF_NOEXIST));
        slot = BACKEND_STATS.get_ptr_mut(key);
    }
    if let Some(slot) = slot {
        add(slot, 1);
    }
}

/// `slot` must point into a map value for this run (8-byte aligned, as
/// every map value is).
#[inline(always)]
fn add(slot: *mut u64, n: u64) {
    // SAFETY: as the caller promises; the kernel keeps the value alive
    // for the program's run. Relaxed: a counter orders nothing. The result
    // is unused, so this is the plain atomic add every kernel from 5.10
    // accepts.
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
}
