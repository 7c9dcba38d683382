//! Incremental checksum updates (RFC 1624) through the kernel helpers, which
//! also keep skb->csum consistent for CHECKSUM_COMPLETE packets and handle
//! CHECKSUM_PARTIAL (offloaded) ones via the pseudo-header flag.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::proto;

use crate::parse::{Packet, IP_CSUM_OFF};

/// L4 flags: a UDP checksum of 0 means "none" and must stay 0, and a
/// computed 0 must be sent as 0xffff; BPF_F_MARK_MANGLED_0 does both.
#[inline(always)]
fn l4_flags(pkt: &Packet) -> u64 {
    if pkt.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// An IPv4 address changed: IP header checksum and the L4 checksum (whose
/// pseudo-header covers the addresses).
#[inline(always)]
pub fn addr_changed(ctx: &TcContext, pkt: &Packet, from: u32, to: u32) -> Result<(), i64> {
    ctx.l4_csum_replace(
        pkt.csum_off() as usize,
        from as u64,
        to as u64,
        l4_flags(pkt) | BPF_F_PSEUDO_HDR as u64 | 4,
    )?;
    ctx.l3_csum_replace(IP_CSUM_OFF as usize, from as u64, to as u64, 4)
}

/// A port changed: only the L4 checksum covers it.
#[inline(always)]
pub fn port_changed(ctx: &TcContext, pkt: &Packet, from: u16, to: u16) -> Result<(), i64> {
    ctx.l4_csum_replace(
        pkt.csum_off() as usize,
        from as u64,
        to as u64,
        l4_flags(pkt) | 2,
    )
}
