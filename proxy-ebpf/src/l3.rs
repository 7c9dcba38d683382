//! Packets of L3 devices (WireGuard, IPIP): no link-layer header, the IP
//! header comes first.
use aya_ebpf::{helpers::bpf_skb_change_head, programs::TcContext};
use proxy_common::{icmp_error, proto};

use crate::{
    icmp::{self, Quote},
    parse::{Packet, ETH_HLEN},
};

const ETH_P_IP: u16 = 0x0800;

/// The 5-tuple of an IPv4 TCP/UDP packet without options at offset 0, for
/// a conntrack lookup before anything is changed; None for anything else
/// (the full parse after [`push_ethernet`] checks the rest).
#[inline(always)]
pub fn peek(ctx: &TcContext) -> Option<Packet> {
    peek_at(ctx, 0)
}

/// The same for the IPv4 header at `off` (an IPIP packet's inner one).
#[inline(always)]
pub fn peek_at(ctx: &TcContext, off: u32) -> Option<Packet> {
    let ip = ctx.load::<[u8; 24]>(off as usize).ok()?;
    let proto = ip[9];
    // Version 4, no options (IHL 5): the ports follow at 20.
    if ip[0] != 0x45 || (proto != proto::TCP && proto != proto::UDP) {
        return None;
    }
    Some(Packet {
        l4_off: 20,
        l4_len: 0,
        proto,
        tcp_flags: 0,
        ttl_proto_be: 0,
        df: false,
        ip_csum_raw: 0,
        saddr_be: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr_be: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport_be: u16::from_ne_bytes([ip[20], ip[21]]),
        dport_be: u16::from_ne_bytes([ip[22], ip[23]]),
    })
}

/// The quote of an ICMP error without options at offset 0 (and not a
/// fragment), for a conntrack lookup before anything is changed; None for
/// anything else.
#[inline(always)]
pub fn peek_icmp_error(ctx: &TcContext) -> Option<Quote> {
    let ip = ctx.load::<[u8; 21]>(0).ok()?;
    // Version 4, no options; no MF flag, offset 0.
    if ip[0] != 0x45 || ip[9] != proto::ICMP || ip[6] & 0x3f != 0 || ip[7] != 0 {
        return None;
    }
    if !icmp_error::is_error(ip[20]) {
        return None;
    }
    let tot_len = u32::from(u16::from_be_bytes([ip[2], ip[3]]));
    if tot_len > ctx.len() {
        return None;
    }
    let daddr_be = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    icmp::quote(ctx, 20, tot_len, daddr_be).ok()
}

/// Puts an Ethernet header (addresses zero, type IPv4) in front of the
/// packet; `bpf_redirect_neigh` writes the real addresses.
#[inline(always)]
pub fn push_ethernet(ctx: &TcContext) -> Result<(), i64> {
    // SAFETY: a plain helper call on this run's skb.
    let r = unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN, 0) };
    if r != 0 {
        return Err(r);
    }
    ctx.store(12, &ETH_P_IP.to_be(), 0)
}
