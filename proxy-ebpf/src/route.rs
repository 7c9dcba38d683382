//! Forwarding by the TC programs themselves, for flows whose source they
//! rewrite to this node (eTP=Cluster towards a backend on another node).
//!
//! Such a packet cannot go back to the stack once translated: entering a
//! device with one of the node's own addresses as source, it would be
//! dropped as a martian. Leaving the source rewrite to the egress hook
//! needs a program on whatever device the route to the backend names: an
//! overlay (`flannel.1`, `tunl0`, `wg0`), a second NIC. Instead, the
//! program asks the FIB where the translated packet goes, takes that
//! device's address as the SNAT source (the address MASQUERADE would pick,
//! from the device map the agent writes), and redirects the packet there
//! with `bpf_redirect_neigh`, which writes the link-layer header from the
//! neighbour table (or none on an L3 device). Replies come back through
//! `tc_reply` on that device and leave the same way towards the client.
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{
    maps::DEVICES,
    parse::{Packet, IP_CSUM_OFF, IP_TTL_OFF},
};

const AF_INET: u8 = 2;

/// The next hop of a translated packet: the device it leaves by.
pub struct Hop {
    pub ifindex: u32,
}

/// Why a translated packet cannot be forwarded.
pub enum Miss {
    /// No usable route (unreachable, blackhole, forwarding disabled).
    NoRoute,
    /// The packet does not fit the MTU of `ifindex`.
    TooBig { ifindex: u32 },
}

/// Where `pkt`, once its destination is `daddr_be:dport_be`, leaves this
/// node. The lookup is a forwarding one from the device the packet came
/// in by, with its original source (policy routing sees the client).
#[inline(always)]
pub fn lookup(ctx: &TcContext, pkt: &Packet, daddr_be: u32, dport_be: u16) -> Result<Hop, Miss> {
    let mut slot = MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = zeroed_fib_params(&mut slot);
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport_be;
    p.dport = dport_be;
    // SAFETY: the context's skb pointer is valid for this run.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = pkt.saddr_be;
    p.__bindgen_anon_4.ipv4_dst = daddr_be;
    // tot_len stays 0: the helper then checks the skb itself against the
    // egress MTU, which also accepts GSO packets (segmented later).
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        // An unresolved neighbour is resolved by bpf_redirect_neigh.
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop { ifindex: p.ifindex }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Miss::TooBig { ifindex: p.ifindex }),
        _ => Err(Miss::NoRoute),
    }
}

/// Zeroes `slot` with sixteen 4-byte stores: `mem::zeroed()` (or any zero
/// fill LLVM sees as one) becomes a call of a byte-at-a-time memset loop,
/// 64 rounds on every forwarded packet.
#[inline(always)]
fn zeroed_fib_params(slot: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    const WORDS: usize = size_of::<bpf_fib_lookup>() / 4;
    let w = slot.as_mut_ptr().cast::<u32>();
    for i in 0..WORDS {
        // SAFETY: inside the struct (its size is a multiple of its 4-byte
        // alignment); volatile keeps the stores from becoming a memset.
        unsafe { w.add(i).write_volatile(0) };
    }
    // SAFETY: every byte is written; all zeroes is a valid value of this
    // plain C struct.
    unsafe { slot.assume_init_mut() }
}

/// The source address for traffic this node forwards out of `ifindex`
/// (0 when the agent knows none).
#[inline(always)]
pub fn snat_addr(ifindex: u32) -> u32 {
    // SAFETY: copied out at once.
    unsafe { DEVICES.get(ifindex) }.map_or(0, |d| d.snat_addr_be)
}

/// The MTU of `ifindex` as the agent last saw it (0 when unknown).
#[inline(always)]
pub fn mtu(ifindex: u32) -> u32 {
    // SAFETY: copied out at once.
    unsafe { DEVICES.get(ifindex) }.map_or(0, |d| d.mtu)
}

/// Whether a router may forward `pkt`: its TTL is above 1 (it lowers it
/// by one).
#[inline(always)]
pub fn ttl_left(pkt: &Packet) -> bool {
    pkt.ttl_proto_be.to_ne_bytes()[0] > 1
}

/// Lowers the TTL by one as a router does; false when it ran out (the
/// packet must not be forwarded).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, pkt: &Packet) -> Result<bool, i64> {
    let [ttl, proto] = pkt.ttl_proto_be.to_ne_bytes();
    if ttl <= 1 {
        return Ok(false);
    }
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF as usize, pkt.ttl_proto_be as u64, new as u64, 2)?;
    ctx.store(IP_TTL_OFF as usize, &(ttl - 1), 0)?;
    Ok(true)
}

/// Sends the packet out of `hop`'s device towards its next hop; the TC
/// verdict to return.
///
/// No next-hop parameters: the kernel then routes the packet itself at
/// redirect time and attaches that route to it. Tunnels without a fixed
/// remote end (flannel's `flannel.ipip`, Calico's `tunl0`, GRE/sit in NBMA
/// mode) take the outer destination from the packet's route and drop a
/// packet that has none; with the gateway passed in, they would drop every
/// forwarded packet.
#[inline(always)]
pub fn redirect(hop: &Hop) -> i32 {
    // SAFETY: no parameters (null, length 0) is the helper's documented
    // "look the neighbour up yourself" form; it returns TC_ACT_REDIRECT, or
    // TC_ACT_SHOT on bad arguments.
    unsafe { bpf_redirect_neigh(hop.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
