//! ICMP errors about translated flows (see `proxy_common::icmp_error`):
//! the quoted packet's tuple, reversed, is the tuple of a packet of the
//! flow travelling the way the error travels; the conntrack entry such a
//! packet would find says how to rewrite the error, and the error then
//! goes where such a packet goes (the program forwards it, or the stack).
//!
//! Fails open like the rest: an error whose quote cannot be read or that
//! quotes no translated flow passes untouched, counted.
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use proxy_common::{
    counters, ct_dir, ct_flags,
    icmp_error::{self, Fields, Rewrite, ICMP_HLEN, IPV4_HLEN, QUOTED_L4_LEN},
    proto, CtKey,
};

use crate::{
    counters::bump,
    ct, l3,
    parse::{parse, Packet, Parsed, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF},
    route::{self, Miss},
};

/// IPv4 fragment offset (without the flags): a quoted non-first fragment
/// has no ports.
const IP_OFFSET: u8 = 0x1f;
/// Offsets of the checksums in the TCP and UDP headers.
const TCP_CSUM_OFF: u32 = 16;
const UDP_CSUM_OFF: u32 = 6;
/// Offset of the checksum in the ICMP header.
const ICMP_CSUM_OFF: u32 = 2;
/// Offsets inside an IPv4 header (the quoted one).
const IP_PROTO: u32 = 9;
const IP_CSUM: u32 = 10;
const IP_SADDR: u32 = 12;
const IP_DADDR: u32 = 16;

/// Where the error arrived, which decides the directions looked up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `tc_ingress`: from a backend's side about a forwarded packet
    /// (REPLY_SNAT), or from the client's side about a reply (FORWARD).
    Ingress,
    /// `tc_reply`, `tc_reply_l3`: from a backend's side only.
    Reply,
    /// `tc_egress`: sent by this node or a local backend about a DNATed
    /// packet the stack forwarded (REPLY).
    Egress,
}

/// The quoted packet of an ICMP error: where its parts are and its tuple.
pub struct Quote {
    icmp_off: u32,
    inner_off: u32,
    inner_l4_off: u32,
    /// The quote holds the L4 checksum: always UDP's (in the 8 bytes),
    /// TCP's with a full header.
    l4_csum: bool,
    proto: u8,
    saddr_be: u32,
    daddr_be: u32,
    sport_be: u16,
    dport_be: u16,
}

impl Quote {
    /// The conntrack key of a packet travelling the way the error travels:
    /// the quoted tuple reversed.
    #[inline(always)]
    fn reversed_key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr_be: self.daddr_be,
            daddr_be: self.saddr_be,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            dir,
            _pad: 0,
        }
    }
}

/// Reads the quote of the ICMP message at `icmp_off`, which ends at
/// `icmp_end` and was sent to `daddr_be`; Err is the counter reason to
/// pass it with.
#[inline(always)]
pub fn quote(ctx: &TcContext, icmp_off: u32, icmp_end: u32, daddr_be: u32) -> Result<Quote, u32> {
    let inner_off = icmp_off + ICMP_HLEN as u32;
    let ip: [u8; IPV4_HLEN] = ctx
        .load(inner_off as usize)
        .map_err(|_| counters::TC_PASS_MALFORMED)?;
    let ihl = u32::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN as u32 {
        return Err(counters::TC_PASS_MALFORMED);
    }
    let proto = ip[9];
    if (proto != proto::TCP && proto != proto::UDP) || ip[6] & IP_OFFSET != 0 || ip[7] != 0 {
        return Err(counters::TC_ICMP_PASS_UNKNOWN);
    }
    let inner_l4_off = inner_off + ihl;
    if inner_l4_off + QUOTED_L4_LEN as u32 > icmp_end {
        return Err(counters::TC_PASS_MALFORMED);
    }
    let ports: [u8; 4] = ctx
        .load(inner_l4_off as usize)
        .map_err(|_| counters::TC_PASS_MALFORMED)?;
    let saddr_be = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    // An error goes back to the sender of what it quotes; anything else
    // is not a well-formed error and is left alone.
    if saddr_be != daddr_be {
        return Err(counters::TC_ICMP_PASS_UNKNOWN);
    }
    Ok(Quote {
        icmp_off,
        inner_off,
        inner_l4_off,
        l4_csum: proto == proto::UDP || inner_l4_off + TCP_CSUM_OFF + 2 <= icmp_end,
        proto,
        saddr_be,
        daddr_be: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}

/// Fills in `plan`'s rewrite for the flow `q` quotes, if it is one the
/// entry under `dir` translates; false otherwise. The entry is read in
/// place and not touched (an error is no sign of life of the flow); the
/// results go straight into the plan, since LLVM lowered a returned
/// `Option<(CtValue, Rewrite)>` with shifts of the map value pointer,
/// which the verifier refuses.
#[inline(never)]
fn find_into(q: &Quote, dir: u8, plan: &mut Plan) -> bool {
    let Some(e) = ct::get(&q.reversed_key(dir)) else {
        return false;
    };
    // SAFETY: valid for this run (LRU entries are RCU-freed).
    let e = unsafe { &*e };
    let Some(rw) = icmp_error::rewrite_for(dir, e) else {
        return false;
    };
    plan.rw = rw;
    plan.redirect_to_be = if e.flags & ct_flags::REDIRECT != 0 {
        e.addr_be
    } else {
        0
    };
    true
}

/// Whether the packet, its IPv4 header at `ip_off`, may be an ICMP
/// message: one byte read, so the programs' TCP/UDP paths pay nothing
/// more for the ICMP one.
#[inline(always)]
pub fn maybe(ctx: &TcContext, ip_off: u32) -> bool {
    crate::parse::read::<u8>(ctx, (ip_off + IP_PROTO) as usize) == Some(proto::ICMP)
}

/// What [`entry`] found out in [`prepare`] and [`apply`] acts on.
struct Plan {
    outer: Packet,
    q: Quote,
    rw: Rewrite,
    /// The new outer destination of an error about a flow the program
    /// forwards itself (`ct_flags::REDIRECT`), 0 when the stack forwards it.
    redirect_to_be: u32,
}

/// What [`prepare`] made of the packet.
enum Prepared {
    /// Not an ICMP error: the TCP/UDP path decides.
    NotAnError,
    /// An error to pass untouched, counted with this reason.
    Pass(u32),
    /// An error about a translated flow: the plan is filled in.
    Translate,
}

/// The verdict for an ICMP error arriving on `side` (Ethernet packets),
/// or None when the packet is no ICMP error.
///
/// Subprograms, not inlined, called one after the other: the verifier adds
/// up the stack frames along a call chain (512 bytes at most), and the
/// TCP/UDP path already uses most of that. Here only the plan stays on the
/// stack while parsing and lookups ([`prepare`]) and then routing and the
/// rewrite ([`apply`]) each use their own buffers.
#[inline(never)]
pub fn entry(ctx: &TcContext, side: Side) -> Option<i32> {
    // SAFETY: plain integers and structs of them: all zeroes is valid, and
    // `prepare` fills in what `apply` reads before returning Translate.
    let mut plan: Plan = unsafe { core::mem::zeroed() };
    match prepare(ctx, side, &mut plan) {
        Prepared::NotAnError => None,
        Prepared::Pass(reason) => {
            bump(reason);
            Some(TC_ACT_OK)
        }
        Prepared::Translate => Some(apply(ctx, &plan)),
    }
}

/// Parses the error, reads its quote and finds the flow it quotes.
#[inline(never)]
fn prepare(ctx: &TcContext, side: Side, plan: &mut Plan) -> Prepared {
    let outer = match parse(ctx) {
        Parsed::IcmpError(outer) => outer,
        Parsed::Malformed => return Prepared::Pass(counters::TC_PASS_MALFORMED),
        _ => return Prepared::NotAnError,
    };
    let q = match quote(
        ctx,
        outer.l4_off,
        outer.l4_off + outer.l4_len,
        outer.daddr_be,
    ) {
        Ok(q) => q,
        Err(reason) => return Prepared::Pass(reason),
    };
    let found = match side {
        Side::Ingress => {
            find_into(&q, ct_dir::REPLY_SNAT, plan) || find_into(&q, ct_dir::FORWARD, plan)
        }
        Side::Reply => find_into(&q, ct_dir::REPLY_SNAT, plan),
        Side::Egress => find_into(&q, ct_dir::REPLY, plan),
    };
    if !found {
        return Prepared::Pass(counters::TC_ICMP_PASS_UNKNOWN);
    }
    plan.outer = outer;
    plan.q = q;
    Prepared::Translate
}

/// Rewrites the error and sends it on. A flow the program forwards itself:
/// the error goes the same way, routed to its new outer destination, TTL
/// lowered, redirected. Otherwise the stack forwards the flow's packets:
/// so the error.
#[inline(never)]
fn apply(ctx: &TcContext, plan: &Plan) -> i32 {
    let mut hop = None;
    if plan.redirect_to_be != 0 {
        match route::lookup(ctx, &plan.outer, plan.redirect_to_be, 0) {
            Ok(h) => hop = Some(h),
            Err(Miss::NoRoute) => {
                bump(counters::TC_DROP_NO_ROUTE);
                return TC_ACT_SHOT;
            }
            // No ICMP error about an ICMP error: dropped, as a router would.
            Err(Miss::TooBig { .. }) => {
                bump(counters::TC_FRAG_NEEDED);
                return TC_ACT_SHOT;
            }
        }
    }
    if rewrite(ctx, &plan.q, &plan.rw).is_err() {
        bump(counters::ERR_REWRITE);
        return TC_ACT_SHOT;
    }
    let Some(hop) = hop else {
        bump(counters::TC_ICMP_TRANSLATED);
        return TC_ACT_OK;
    };
    match route::decrement_ttl(ctx, &plan.outer) {
        Ok(true) => {
            bump(counters::TC_ICMP_TRANSLATED);
            route::redirect(&hop)
        }
        Ok(false) => {
            bump(counters::TC_DROP_NO_ROUTE);
            TC_ACT_SHOT
        }
        Err(_) => {
            bump(counters::ERR_REWRITE);
            TC_ACT_SHOT
        }
    }
}

/// `tc_reply_l3` for a packet that may be an ICMP error (no link-layer
/// header): one about a forwarded packet of ours gets an Ethernet header
/// pushed in front (as replies do, see `tc::tc_reply_l3`) and is handled
/// as on `tc_reply`; anything else passes as it came.
#[inline(never)]
pub fn reply_l3(ctx: &TcContext) -> i32 {
    if !ours_l3(ctx) {
        return TC_ACT_OK;
    }
    if l3::push_ethernet(ctx).is_err() {
        bump(counters::ERR_REWRITE);
        return TC_ACT_OK;
    }
    match entry(ctx, Side::Reply) {
        Some(TC_ACT_OK) | None => {
            // With the pushed header the stack would misread it.
            bump(counters::ERR_REWRITE);
            TC_ACT_SHOT
        }
        Some(verdict) => verdict,
    }
}

/// Whether an L3 packet is an ICMP error about a forwarded packet of ours,
/// looked up before anything is changed.
#[inline(never)]
fn ours_l3(ctx: &TcContext) -> bool {
    let Some(q) = l3::peek_icmp_error(ctx) else {
        return false;
    };
    // SAFETY: plain integers and structs of them: all zeroes is valid.
    let mut plan: Plan = unsafe { core::mem::zeroed() };
    if find_into(&q, ct_dir::REPLY_SNAT, &mut plan) {
        return true;
    }
    bump(counters::TC_ICMP_PASS_UNKNOWN);
    false
}

/// Rewrites the outer header and the quote (see `icmp_error::translate`),
/// field by field. Every store keeps skb->csum right for
/// CHECKSUM_COMPLETE packets.
#[inline(never)]
fn rewrite(ctx: &TcContext, q: &Quote, rw: &Rewrite) -> Result<(), i64> {
    let l4_csum_off = if q.proto == proto::TCP {
        q.inner_l4_off + TCP_CSUM_OFF
    } else {
        q.inner_l4_off + UDP_CSUM_OFF
    };
    let mut f = Fields {
        inner_saddr_be: q.saddr_be,
        inner_daddr_be: q.daddr_be,
        sport_be: q.sport_be,
        dport_be: q.dport_be,
        ..Fields::default()
    };
    // Loaded straight into `f`: values held in registers across the helper
    // calls would each take a stack slot of their own.
    load_into(ctx, IP_SADDR_OFF, &mut f.outer_saddr_be)?;
    load_into(ctx, IP_DADDR_OFF, &mut f.outer_daddr_be)?;
    load_into(ctx, IP_CSUM_OFF, &mut f.outer_csum_be)?;
    load_into(ctx, q.icmp_off + ICMP_CSUM_OFF, &mut f.icmp_csum_be)?;
    load_into(ctx, q.inner_off + IP_CSUM, &mut f.inner_csum_be)?;
    if q.l4_csum {
        let mut c = 0u16;
        load_into(ctx, l4_csum_off, &mut c)?;
        // A UDP checksum of 0 means none, and stays 0.
        if c != 0 || q.proto == proto::TCP {
            f.l4_csum_be = Some(c);
        }
    }
    icmp_error::translate(&mut f, rw);
    store_from(ctx, IP_SADDR_OFF, &f.outer_saddr_be)?;
    store_from(ctx, IP_DADDR_OFF, &f.outer_daddr_be)?;
    store_from(ctx, IP_CSUM_OFF, &f.outer_csum_be)?;
    store_from(ctx, q.icmp_off + ICMP_CSUM_OFF, &f.icmp_csum_be)?;
    store_from(ctx, q.inner_off + IP_SADDR, &f.inner_saddr_be)?;
    store_from(ctx, q.inner_off + IP_DADDR, &f.inner_daddr_be)?;
    store_from(ctx, q.inner_off + IP_CSUM, &f.inner_csum_be)?;
    store_from(ctx, q.inner_l4_off, &f.sport_be)?;
    store_from(ctx, q.inner_l4_off + 2, &f.dport_be)?;
    if let Some(c) = &f.l4_csum_be {
        store_from(ctx, l4_csum_off, c)?;
    }
    Ok(())
}

/// Reads the packet at `off` into `dst` (a plain integer).
#[inline(always)]
fn load_into<T>(ctx: &TcContext, off: u32, dst: &mut T) -> Result<(), i64> {
    // SAFETY: `dst` is writable for size_of::<T>() bytes, and T is an
    // integer for which any bytes are a valid value.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off,
            dst as *mut T as *mut c_void,
            size_of::<T>() as u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}

/// Writes `v` into the packet at `off`, skb->csum kept right.
#[inline(always)]
fn store_from<T>(ctx: &TcContext, off: u32, v: &T) -> Result<(), i64> {
    // SAFETY: `v` is readable for size_of::<T>() bytes.
    let r = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb as *mut _,
            off,
            v as *const T as *const c_void,
            size_of::<T>() as u32,
            BPF_F_RECOMPUTE_CSUM as u64,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}
