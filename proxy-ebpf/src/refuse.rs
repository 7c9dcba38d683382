//! Refusals for externalIPs and LoadBalancer IPs of Services without any
//! endpoint: the packet is turned into its answer (a TCP RST, or an ICMP
//! port unreachable; built by `proxy_common::refusal`) and sent back out of
//! the device it arrived on. NodePorts do not come here: the node's own
//! stack refuses those (see `tc::no_endpoints`). The same way, a packet too
//! big for the device the program would forward it by becomes an ICMP
//! "fragmentation needed" ([`too_big`]).
use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{
    counters, proto,
    refusal::{self, TcpSegment, IPV4_HLEN},
};

use crate::parse::{Packet, ETH_HLEN};

/// The verdict for `pkt`: redirected back as a refusal, or dropped when
/// no refusal is due (a RST) or possible (IP options), with the counter
/// for the outcome.
#[inline(always)]
pub fn refuse(ctx: &TcContext, pkt: &Packet) -> (i32, u32) {
    let sent = if pkt.proto == proto::TCP {
        tcp(ctx, pkt)
    } else {
        icmp(ctx, pkt)
    };
    match sent {
        Ok(true) => (back_out(ctx), counters::TC_REJECT_NO_ENDPOINTS),
        Ok(false) => (TC_ACT_SHOT, counters::TC_DROP_NO_ENDPOINTS),
        // The packet may be half rewritten: it must not go anywhere.
        Err(_) => (TC_ACT_SHOT, counters::ERR_REWRITE),
    }
}

/// Replaces the packet by the RST answering it; false when a RST is not
/// due (the segment is a RST itself).
#[inline(always)]
fn tcp(ctx: &TcContext, pkt: &Packet) -> Result<bool, i64> {
    // seq, ack, data offset and flags of the segment.
    let hdr: [u8; 14] = ctx.load(pkt.l4_off as usize + 4)?;
    let doff = u32::from(hdr[8] >> 4) * 4;
    let seg = TcpSegment {
        saddr: pkt.saddr_be.to_ne_bytes(),
        daddr: pkt.daddr_be.to_ne_bytes(),
        sport: pkt.sport_be.to_ne_bytes(),
        dport: pkt.dport_be.to_ne_bytes(),
        seq: u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]),
        ack: u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        flags: hdr[9],
        // parse() checked doff ≤ l4_len.
        payload_len: pkt.l4_len.saturating_sub(doff),
    };
    let Some(rst) = refusal::tcp_rst(&seg) else {
        return Ok(false);
    };
    replace(ctx, &rst)?;
    Ok(true)
}

/// Replaces the packet by the ICMP port unreachable answering it; false
/// when the IPv4 header has options (the quote would not fit the fixed
/// layout; such packets are rare enough to drop).
#[inline(always)]
fn icmp(ctx: &TcContext, pkt: &Packet) -> Result<bool, i64> {
    icmp_answer(ctx, pkt, refusal::icmp_port_unreachable)
}

/// The verdict for a packet too big for the next hop's `mtu`: with DF (and
/// a known MTU) it becomes the ICMP "fragmentation needed" telling its
/// sender the MTU, sent back out of the device it came in by; otherwise it
/// is dropped (the program cannot fragment).
#[inline(always)]
pub fn too_big(ctx: &TcContext, pkt: &Packet, mtu: u32) -> (i32, u32) {
    let Ok(mtu) = u16::try_from(mtu) else {
        return (TC_ACT_SHOT, counters::TC_FRAG_NEEDED);
    };
    if !pkt.df || mtu == 0 {
        return (TC_ACT_SHOT, counters::TC_FRAG_NEEDED);
    }
    match icmp_answer(ctx, pkt, |ip, l4| refusal::icmp_frag_needed(ip, l4, mtu)) {
        Ok(true) => (back_out(ctx), counters::TC_FRAG_NEEDED),
        Ok(false) => (TC_ACT_SHOT, counters::TC_FRAG_NEEDED),
        Err(_) => (TC_ACT_SHOT, counters::ERR_REWRITE),
    }
}

/// Replaces the packet by the ICMP error `build` makes of its IPv4 header
/// and first 8 payload bytes; false when the header has options.
#[inline(always)]
fn icmp_answer(
    ctx: &TcContext,
    pkt: &Packet,
    build: impl FnOnce(&[u8; IPV4_HLEN], &[u8; 8]) -> [u8; refusal::ICMP_UNREACH_LEN],
) -> Result<bool, i64> {
    if pkt.l4_off != ETH_HLEN + IPV4_HLEN as u32 {
        return Ok(false);
    }
    let ip: [u8; IPV4_HLEN] = ctx.load(ETH_HLEN as usize)?;
    let l4: [u8; 8] = ctx.load(pkt.l4_off as usize)?;
    replace(ctx, &build(&ip, &l4))?;
    Ok(true)
}

/// Sends the (rewritten) packet back out of the device it came in by.
#[inline(always)]
fn back_out(ctx: &TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; it returns TC_ACT_REDIRECT (or
    // TC_ACT_SHOT for flags it does not know, which 0 is not).
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Makes the packet `ETH + l3`: sized first (shrunk or grown), then the
/// IP datagram written and the Ethernet addresses swapped so it goes back
/// to the hop it came from.
#[inline(always)]
fn replace<const N: usize>(ctx: &TcContext, l3: &[u8; N]) -> Result<(), i64> {
    let mac: [u8; 12] = ctx.load(0)?;
    // SAFETY: a plain helper call on this run's skb.
    let r = unsafe { bpf_skb_change_tail(ctx.skb.skb, ETH_HLEN + N as u32, 0) };
    if r != 0 {
        return Err(r);
    }
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&mac[6..]);
    swapped[6..].copy_from_slice(&mac[..6]);
    // RECOMPUTE_CSUM keeps skb->csum right for CHECKSUM_COMPLETE packets.
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    ctx.store(0, &swapped, flags)?;
    ctx.store(ETH_HLEN as usize, l3, flags)
}
