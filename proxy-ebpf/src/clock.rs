//! Seconds of the monotonic clock, for conntrack and affinity timestamps.
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    Global,
};

/// Whether the kernel has `bpf_ktime_get_coarse_ns` (5.11+). The agent
/// probes the kernel and sets this before loading; in the frozen read-only
/// data the verifier knows its value and never walks the call on 5.10,
/// which would reject the program. The coarse clock lags by at most a tick,
/// nothing at a second's resolution, and costs a fraction of the precise
/// one: about 25 ns per read on a VM's clock source, twice per packet of an
/// established flow.
#[unsafe(no_mangle)]
static HAVE_COARSE_CLOCK: Global<u8> = Global::new(1);

/// Seconds of the monotonic clock (the agent's conntrack sweeper reads
/// the same clock); u32 wraps after 136 years of uptime.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: helpers without preconditions; the coarse one only where the
    // agent found it.
    let ns = unsafe {
        if HAVE_COARSE_CLOCK.load() != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    };
    (ns / 1_000_000_000) as u32
}
