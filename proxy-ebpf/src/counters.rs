//! Per-CPU counters by reason (see `proxy_common::counters`).
use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(reason: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU,
        // which do not preempt each other.
        unsafe { *slot += 1 };
    }
}
