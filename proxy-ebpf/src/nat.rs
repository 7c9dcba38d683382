//! Address and port rewrites, each with its checksum update.
use aya_ebpf::programs::TcContext;

use crate::{
    csum,
    parse::{Packet, IP_DADDR_OFF, IP_SADDR_OFF, IP_TTL_OFF},
};

/// Rewrites the destination to `addr_be:port_be`.
#[inline(always)]
pub fn dnat(ctx: &TcContext, pkt: &Packet, addr_be: u32, port_be: u16) -> Result<(), i64> {
    if pkt.daddr_be != addr_be {
        csum::addr_changed(ctx, pkt, pkt.daddr_be, addr_be)?;
        ctx.store(IP_DADDR_OFF as usize, &addr_be, 0)?;
    }
    if pkt.dport_be != port_be {
        csum::port_changed(ctx, pkt, pkt.dport_be, port_be)?;
        ctx.store(pkt.dport_off() as usize, &port_be, 0)?;
    }
    Ok(())
}

/// Rewrites the source to `addr_be:port_be`.
#[inline(always)]
pub fn snat(ctx: &TcContext, pkt: &Packet, addr_be: u32, port_be: u16) -> Result<(), i64> {
    if pkt.saddr_be != addr_be {
        csum::addr_changed(ctx, pkt, pkt.saddr_be, addr_be)?;
        ctx.store(IP_SADDR_OFF as usize, &addr_be, 0)?;
    }
    if pkt.sport_be != port_be {
        csum::port_changed(ctx, pkt, pkt.sport_be, port_be)?;
        ctx.store(pkt.sport_off() as usize, &port_be, 0)?;
    }
    Ok(())
}

/// A packet the program forwards itself: destination `daddr_be:dport_be`,
/// source `saddr_be:sport_be`, TTL lowered by one (the caller checked it
/// is above 1). The checksum changes are summed here and applied once per
/// kind, and each group of adjacent fields is written at once: the TTL,
/// the IPv4 header checksum (computed here, see `csum::replaced`) and both
/// addresses in one store, the ports in another. Four helper calls instead
/// of twelve, on every packet of such a flow.
#[inline(always)]
pub fn forwarded(
    ctx: &TcContext,
    pkt: &Packet,
    (daddr_be, dport_be): (u32, u16),
    (saddr_be, sport_be): (u32, u16),
) -> Result<(), i64> {
    let addrs = csum::change(
        csum::change(0, pkt.saddr_be, saddr_be),
        pkt.daddr_be,
        daddr_be,
    );
    // Source and destination port as the 32-bit word they form in the
    // header (memory order), like the addresses.
    let word = |s: u16, d: u16| u32::from_ne_bytes(pack(s, d));
    let ports = csum::change(
        0,
        word(pkt.sport_be, pkt.dport_be),
        word(sport_be, dport_be),
    );
    let [ttl, proto] = pkt.ttl_proto_be.to_ne_bytes();
    let lowered = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
    let ttl_sum = csum::change(0, u32::from(pkt.ttl_proto_be), u32::from(lowered));
    csum::l4_changed(ctx, pkt, addrs, ports)?;
    let ip_csum = csum::replaced(pkt.ip_csum_raw, csum::add(addrs, ttl_sum));
    let [c0, c1] = ip_csum.to_ne_bytes();
    let [s0, s1, s2, s3] = saddr_be.to_ne_bytes();
    let [d0, d1, d2, d3] = daddr_be.to_ne_bytes();
    // TTL, protocol (unchanged), checksum, source, destination: adjacent
    // in the IPv4 header.
    let head = [
        ttl.wrapping_sub(1),
        proto,
        c0,
        c1,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ];
    ctx.store(IP_TTL_OFF as usize, &head, 0)?;
    ctx.store(pkt.sport_off() as usize, &pack(sport_be, dport_be), 0)
}

/// Two raw 16-bit fields as the four bytes they occupy in a header.
#[inline(always)]
fn pack(first: u16, second: u16) -> [u8; 4] {
    let [a, b] = first.to_ne_bytes();
    let [c, d] = second.to_ne_bytes();
    [a, b, c, d]
}
