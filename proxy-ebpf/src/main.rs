//! bpfproxy's kernel programs.
//!
//! Socket-level load balancing (cgroup `sock_addr` hooks): a connect() or
//! sendmsg() to a Service frontend is rewritten to a backend before the
//! kernel routes it, and recvmsg()/getpeername() show the frontend again.
//!
//! Per-packet translation (TC programs, `tc`): NodePort, externalIP and
//! LoadBalancer traffic from outside the node, with conntrack.
//!
//! Every entry point fails open: on an internal error the socket operation
//! goes through untouched and a per-reason counter is bumped.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no atomic compare-and-swap, so core's AtomicU64 has
// no fetch_add there; the intrinsic gives the kernel's atomic add (see
// `stats`). The crate is built with the nightly toolchain anyway.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod ct;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod ipip;
#[cfg(target_arch = "bpf")]
mod l3;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod refuse;
#[cfg(target_arch = "bpf")]
mod route;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tc;

/// Built for the host (e.g. by `cargo clippy --workspace`), the crate is an
/// empty program; the real one only exists for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the code has no panic paths (the verifier
    // would reject one with "last insn is not an exit or jmp").
    loop {}
}

/// GPL-compatible, which some helpers require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
