//! Address and port rewrites, each with its checksum update.
use aya_ebpf::programs::TcContext;

use crate::{
    csum,
    parse::{Packet, IP_DADDR_OFF, IP_SADDR_OFF},
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
