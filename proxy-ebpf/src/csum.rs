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

/// One's-complement addition of 32-bit words (the kernel's `csum_add`).
#[inline(always)]
pub fn add(sum: u32, x: u32) -> u32 {
    let (s, carry) = sum.overflowing_add(x);
    s.wrapping_add(u32::from(carry))
}

/// `sum` plus the change of one field from `from` to `to` (raw, as the
/// packet holds them), as the kernel's `csum_replace` helpers count it.
#[inline(always)]
pub fn change(sum: u32, from: u32, to: u32) -> u32 {
    add(add(sum, !from), to)
}

/// Applies precomputed checksum changes to the L4 checksum of a packet
/// whose addresses changed by `addrs` and ports by `ports`: one helper
/// call per kind of change instead of one per field (the helpers'
/// by-difference form, size 0). Addresses go in as pseudo-header, so the
/// kernel keeps skb->csum and offloaded checksums right, as above.
#[inline(always)]
pub fn l4_changed(ctx: &TcContext, pkt: &Packet, addrs: u32, ports: u32) -> Result<(), i64> {
    let off = pkt.csum_off() as usize;
    let flags = l4_flags(pkt);
    ctx.l4_csum_replace(off, 0, u64::from(addrs), flags | BPF_F_PSEUDO_HDR as u64)?;
    ctx.l4_csum_replace(off, 0, u64::from(ports), flags)
}

/// The 16-bit checksum `old` (raw) after its fields changed by `diff`:
/// what `bpf_l3_csum_replace` writes in its by-difference form (the
/// kernel's `csum_replace_by_diff`), computed here so the caller can write
/// it along with the changed fields in one store.
#[inline(always)]
pub fn replaced(old: u16, diff: u32) -> u16 {
    let sum = add(diff, !u32::from(old));
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}
