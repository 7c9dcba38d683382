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
/// kind, and each group of adjacent fields is written at once: six helper
/// calls instead of twelve, on every packet of such a flow.
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
    csum::changed(ctx, pkt, addrs, ports, ttl_sum)?;
    ctx.store(IP_TTL_OFF as usize, &ttl.wrapping_sub(1), 0)?;
    // Source then destination address: adjacent in the IPv4 header.
    let addrs_raw = [saddr_be.to_ne_bytes(), daddr_be.to_ne_bytes()];
    ctx.store(IP_SADDR_OFF as usize, &addrs_raw, 0)?;
    ctx.store(pkt.sport_off() as usize, &pack(sport_be, dport_be), 0)
}

/// Two raw 16-bit fields as the four bytes they occupy in a header.
#[inline(always)]
fn pack(first: u16, second: u16) -> [u8; 4] {
    let [a, b] = first.to_ne_bytes();
    let [c, d] = second.to_ne_bytes();
    [a, b, c, d]
}
