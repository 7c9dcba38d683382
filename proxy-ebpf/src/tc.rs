//! The TC programs: per-packet NodePort / externalIP / LoadBalancer
//! translation for traffic that did not start on a socket of this node.
//!
//! - `tc_ingress` (the client-facing devices, `--devices`): packets of
//!   known flows and new packets to external frontends get their backend.
//!   To a backend on this node (or under eTP=Local) only the destination
//!   changes and the stack forwards the packet. To a backend on another
//!   node (eTP=Cluster) the source becomes this node's address on the
//!   egress device too and the program forwards the packet itself (see
//!   `route`), whatever that device is: the same NIC, a second one, an
//!   overlay.
//! - `tc_reply` (every other device replies can come back by: overlays,
//!   second NICs): replies of those SNATed flows get client and frontend
//!   back and are forwarded to the client by the program. `tc_ingress`
//!   does the same on the client-facing devices.
//! - `tc_egress` (the client-facing devices, after routing): replies of
//!   flows the stack forwarded get the frontend back as source. Source
//!   rewrites of such flows wait for egress because a packet entering with
//!   a node address as source is dropped as a martian.
//!
//! Both fail open: anything unknown or unparsable passes untouched, and an
//! internal error lets the packet through untouched with a counter bumped.
//! The one exception is a rewrite that fails halfway: that packet is
//! dropped, since sending it with mixed addresses or a wrong checksum is
//! worse.
use core::mem::MaybeUninit;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    counters, ct_dir, ct_flags, node_flags, proto, svc_flags, svc_stat, CtValue, ServiceKey,
    ServiceValue, SourceRange, AFFINITY_CLIENT_IP, BACKEND_FLAG_LOCAL,
};

use crate::{
    counters::bump,
    ct::{self, Forward, NewFlow},
    icmp::{self, Side},
    ipip, l3, lb,
    maps::{NODE_ADDRS, SERVICES, SOURCE_RANGES},
    nat,
    parse::{parse, read, Packet, Parsed, ETH_HLEN},
    refuse,
    route::{self, Hop, Miss},
    stats,
};

const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;

// Each program first asks whether the packet may be an ICMP error (one
// byte) and hands it to `icmp`; the TCP/UDP path is a subprogram of its
// own. Both are called from a small entry frame, never one from the other:
// the verifier adds up the stack frames along a call chain (512 bytes at
// most), and the TCP/UDP path of `tc_ingress` alone uses most of that.

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    // One read of the IP protocol answers both questions below.
    let ip_proto = read::<u8>(&ctx, (ETH_HLEN + IP_PROTO_OFF) as usize).unwrap_or(0);
    if ip_proto == proto::ICMP {
        if let Some(verdict) = icmp::entry(&ctx, Side::Ingress) {
            return verdict;
        }
    }
    if ip_proto == proto::IPIP {
        return ipip_reply(&ctx);
    }
    // Parsed once here, in a call of its own, for every step below (a new
    // flow's packet used to be parsed twice, a settling one three times).
    let mut slot = MaybeUninit::<Packet>::uninit();
    if !parse_into(&ctx, &mut slot) {
        return PASS;
    }
    // SAFETY: parse_into wrote the packet when it returned true.
    let pkt = unsafe { slot.assume_init() };
    let mut verdict = ingress_flow(&ctx, &pkt, true);
    if verdict == SETTLE {
        if let Some(dropped) = settle_flow(&pkt) {
            return dropped;
        }
        verdict = ingress_flow(&ctx, &pkt, false);
    }
    if verdict == NEW_FLOW || verdict == REUSED_FLOW {
        return new_flow(&ctx, &pkt, verdict == REUSED_FLOW);
    }
    verdict
}

/// Offset of the protocol byte inside the IPv4 header.
const IP_PROTO_OFF: u32 = 9;

/// Parses the packet into `slot` (written only when true); false (counted)
/// for what passes untouched. Not inlined: the parser's buffers stay out
/// of the entry's frame. The slot is not zeroed first: that took a call.
#[inline(never)]
fn parse_into(ctx: &TcContext, slot: &mut MaybeUninit<Packet>) -> bool {
    match parse_or_pass(ctx) {
        Some(p) => {
            slot.write(p);
            true
        }
        None => false,
    }
}

/// What `ingress_flow` returns for a packet of no known flow, for a SYN
/// reusing a closed flow's tuple, and for a packet whose flow must settle
/// first (`ct::settle`). Each is done by a call of its own from the
/// program's top, so their frames never stack on the translation's (5.10
/// allows 512 bytes for a whole call chain).
const NEW_FLOW: i32 = i32::MIN;
const SETTLE: i32 = i32::MIN + 1;
const REUSED_FLOW: i32 = i32::MIN + 2;

/// Settles the flow of the packet (see `ct::settle`): None to go on and
/// translate it, or the verdict for a flow whose SNAT port another flow
/// holds now: ended (its entry goes, the packet is dropped) rather than
/// mixed with the other.
#[inline(never)]
fn settle_flow(pkt: &Packet) -> Option<i32> {
    if ct::settle(pkt) {
        return None;
    }
    bump(counters::ERR_SNAT_LOST);
    ct::forget_forward(pkt);
    Some(DROP)
}

/// An IPIP packet at a NIC (`tc_ingress`, `tc_reply`): a reply of a flow
/// forwarded over the tunnel is decapsulated and translated; anything else
/// passes to the tunnel device untouched.
#[inline(never)]
fn ipip_reply(ctx: &TcContext) -> i32 {
    match ipip::decap_reply(ctx) {
        Ok(false) => PASS,
        Ok(true) => match reply_only(ctx) {
            // Decapsulated, it would reach the stack outside its tunnel: a
            // reply of ours that could not be handled goes no further.
            PASS => {
                bump(counters::ERR_REWRITE);
                DROP
            }
            verdict => verdict,
        },
        Err(_) => {
            bump(counters::ERR_REWRITE);
            PASS
        }
    }
}

/// TCP and UDP at `tc_ingress`.
#[inline(never)]
fn ingress_flow(ctx: &TcContext, pkt: &Packet, may_settle: bool) -> i32 {
    match try_ingress(ctx, pkt, may_settle) {
        Ok(action) => action,
        Err(reason) => {
            bump(reason);
            PASS
        }
    }
}

/// Ingress of the devices replies of forwarded flows come back by, other
/// than the client-facing ones: only those replies (and ICMP errors about
/// packets of those flows) are touched.
#[classifier]
pub fn tc_reply(ctx: TcContext) -> i32 {
    if icmp::maybe(&ctx, ETH_HLEN) {
        if let Some(verdict) = icmp::entry(&ctx, Side::Reply) {
            return verdict;
        }
    }
    if ipip::maybe(&ctx) {
        return ipip_reply(&ctx);
    }
    reply_flow(&ctx)
}

/// TCP and UDP at `tc_reply`.
#[inline(never)]
fn reply_flow(ctx: &TcContext) -> i32 {
    reply_only(ctx)
}

/// [`tc_reply`] for L3 devices (WireGuard, IPIP `tunl0`): their packets
/// start at the IP header. A reply of ours gets an Ethernet header pushed
/// in front, so the one parser reads it and `bpf_redirect_neigh` (which
/// wants a MAC header to replace) forwards it; anything else is left as
/// it came.
#[classifier]
pub fn tc_reply_l3(ctx: TcContext) -> i32 {
    if icmp::maybe(&ctx, 0) {
        return icmp::reply_l3(&ctx);
    }
    reply_l3_flow(&ctx)
}

/// TCP and UDP at `tc_reply_l3`.
#[inline(never)]
fn reply_l3_flow(ctx: &TcContext) -> i32 {
    let Some(pkt) = l3::peek(ctx) else {
        return PASS;
    };
    if ct::lookup(&pkt, ct_dir::REPLY_SNAT).is_none() {
        return PASS;
    }
    if l3::push_ethernet(ctx).is_err() {
        bump(counters::ERR_REWRITE);
        return PASS;
    }
    match reply_only(ctx) {
        // With the pushed header the stack would misread it: a reply of
        // ours that could not be handled (malformed) goes no further.
        PASS => {
            bump(counters::ERR_REWRITE);
            DROP
        }
        verdict => verdict,
    }
}

/// Translates a reply of a flow the programs forwarded; anything else
/// passes.
#[inline(always)]
fn reply_only(ctx: &TcContext) -> i32 {
    let Some(pkt) = parse_or_pass(ctx) else {
        return PASS;
    };
    match ct::lookup(&pkt, ct_dir::REPLY_SNAT) {
        Some(entry) => reply_snat(ctx, &pkt, entry),
        None => PASS,
    }
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    if icmp::maybe(&ctx, ETH_HLEN) {
        if let Some(verdict) = icmp::entry(&ctx, Side::Egress) {
            return verdict;
        }
    }
    egress_flow(&ctx)
}

/// TCP and UDP at `tc_egress`.
#[inline(never)]
fn egress_flow(ctx: &TcContext) -> i32 {
    let pkt = match parse_or_pass(ctx) {
        Some(pkt) => pkt,
        None => return PASS,
    };
    // A bare SYN is no reply (a backend answers with a SYN-ACK), and new
    // flows get no FORWARD_SNAT entries any more: a SYN leaving, such as
    // one `tc_ingress` just translated and redirected here, has nothing
    // to look up (six cold probes of what a new flow costs).
    if pkt.is_tcp_syn_only() {
        return PASS;
    }
    if let Some(entry) = ct::lookup(&pkt, ct_dir::REPLY) {
        ct::touch(entry, &pkt);
        // SAFETY: valid for this run (see ct::touch); fields copied out.
        let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
        return rewritten(nat::snat(ctx, &pkt, addr_be, port_be));
    }
    // Flows SNATed at egress by an earlier version (no REDIRECT flag) keep
    // working across an upgrade.
    if let Some(entry) = ct::lookup(&pkt, ct_dir::FORWARD_SNAT) {
        ct::touch(entry, &pkt);
        // SAFETY: as above.
        let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
        return rewritten(nat::snat(ctx, &pkt, addr_be, port_be));
    }
    PASS
}

/// The parsed packet, or None (counted) for what passes untouched.
#[inline(always)]
fn parse_or_pass(ctx: &TcContext) -> Option<Packet> {
    match parse(ctx) {
        Parsed::Packet(pkt) => Some(pkt),
        // ICMP errors are `icmp`'s, handled before.
        Parsed::Other | Parsed::IcmpError(_) => None,
        Parsed::Fragment => {
            bump(counters::TC_PASS_FRAGMENT);
            None
        }
        Parsed::Malformed => {
            bump(counters::TC_PASS_MALFORMED);
            None
        }
    }
}

/// The verdict after a rewrite.
#[inline(always)]
fn rewritten(result: Result<(), i64>) -> i32 {
    match result {
        Ok(()) => {
            bump(counters::TC_TRANSLATED);
            PASS
        }
        Err(_) => {
            bump(counters::ERR_REWRITE);
            DROP
        }
    }
}

#[inline(always)]
fn try_ingress(ctx: &TcContext, pkt: &Packet, may_settle: bool) -> Result<i32, u32> {
    // A bare SYN is never a reply: the backend answers the client's SYN
    // with a SYN-ACK, and opens nothing towards a SNAT port. A new
    // connection's first packet skips the reply lookup (two cold probes,
    // one per table, of what a new flow costs).
    if !pkt.is_tcp_syn_only() {
        if let Some(entry) = ct::lookup(pkt, ct_dir::REPLY_SNAT) {
            return Ok(reply_snat(ctx, pkt, entry));
        }
    }
    let entry = match ct::lookup_forward(pkt, may_settle) {
        None => return Ok(NEW_FLOW),
        Some(Forward::Settle) => return Ok(SETTLE),
        Some(Forward::Go(entry)) => entry,
    };
    // SAFETY: valid for this run (see ct::touch).
    let closed = unsafe { (*entry).tcp_state } == proxy_common::ct_state::CLOSING;
    // A SYN on a closed flow's 5-tuple is a new connection (port reuse):
    // it gets a fresh backend choice.
    if closed && pkt.is_tcp_syn_only() {
        return Ok(REUSED_FLOW);
    }
    ct::touch(entry, pkt);
    // SAFETY: as above; copied out at once.
    let e = unsafe { *entry };
    count_packet(ctx, e.rev_nat_id);
    if e.flags & ct_flags::REDIRECT == 0 {
        return Ok(rewritten(nat::dnat(ctx, pkt, e.addr_be, e.port_be)));
    }
    Ok(forward(ctx, pkt, &e))
}

/// A reply of a SNATed flow (backend → this node): client and frontend
/// back, then out towards the client.
#[inline(always)]
fn reply_snat(ctx: &TcContext, pkt: &Packet, entry: *mut CtValue) -> i32 {
    ct::touch(entry, pkt);
    // SAFETY: valid for this run (see ct::touch); copied out at once.
    let e = unsafe { *entry };
    count_packet(ctx, e.rev_nat_id);
    if e.flags & ct_flags::REDIRECT == 0 {
        // A flow of an earlier version: the destination here, the source
        // at the egress of the client-facing device (REPLY entry).
        return rewritten(nat::dnat(ctx, pkt, e.addr_be, e.port_be));
    }
    forward(ctx, pkt, &e)
}

/// A packet of a flow the program forwards itself: `e` holds its new
/// destination (`addr_be:port_be`) and source (`nat_addr_be:nat_port_be`).
#[inline(always)]
fn forward(ctx: &TcContext, pkt: &Packet, e: &CtValue) -> i32 {
    match route::lookup(ctx, pkt, e.addr_be, e.port_be) {
        Ok(hop) => translate_and_redirect(ctx, pkt, e, &hop),
        Err(miss) => missed(ctx, pkt, miss),
    }
}

/// Rewrites both ends of `pkt` as `e` says and sends it out by `hop`.
#[inline(always)]
fn translate_and_redirect(ctx: &TcContext, pkt: &Packet, e: &CtValue, hop: &Hop) -> i32 {
    if !route::ttl_left(pkt) {
        // The TTL runs out here: a router drops the packet.
        bump(counters::TC_DROP_NO_ROUTE);
        return DROP;
    }
    let to = (e.addr_be, e.port_be);
    match nat::forwarded(ctx, pkt, to, (e.nat_addr_be, e.nat_port_be)) {
        Ok(()) => {
            bump(counters::TC_TRANSLATED);
            route::redirect(hop)
        }
        Err(_) => {
            bump(counters::ERR_REWRITE);
            DROP
        }
    }
}

/// The verdict for a packet that cannot be forwarded: dropped without a
/// route, answered with "fragmentation needed" when too big and DF is set.
#[inline(always)]
fn missed(ctx: &TcContext, pkt: &Packet, miss: Miss) -> i32 {
    match miss {
        Miss::NoRoute => {
            bump(counters::TC_DROP_NO_ROUTE);
            DROP
        }
        Miss::TooBig { ifindex } => {
            let (action, reason) = refuse::too_big(ctx, pkt, route::mtu(ifindex));
            bump(reason);
            action
        }
    }
}

/// The first packet of a flow to an external frontend (or not ours);
/// `reused`: a SYN on the tuple of a closed flow, whose entries the new
/// ones replace. Not inlined: its locals (the backend choice, the new
/// entries, the route) stay out of the frame the established path's calls
/// stack upon.
#[inline(never)]
fn new_flow(ctx: &TcContext, pkt: &Packet, reused: bool) -> i32 {
    match try_new_flow(ctx, pkt, reused) {
        Ok(action) => action,
        Err(reason) => {
            bump(reason);
            PASS
        }
    }
}

#[inline(always)]
fn try_new_flow(ctx: &TcContext, pkt: &Packet, reused: bool) -> Result<i32, u32> {
    let Some((svc_addr_be, master, default_snat_be)) = frontend(pkt) else {
        return Ok(PASS);
    };
    if master.flags & svc_flags::SOURCE_RANGES != 0 && !source_allowed(&master, pkt.saddr_be) {
        bump(counters::TC_DROP_SOURCE_RANGE);
        stats::service(master.rev_nat_id, svc_stat::DROPPED_SOURCE_RANGE, 1);
        return Ok(DROP);
    }
    if master.count == 0 {
        return Ok(no_endpoints(ctx, pkt, svc_addr_be, &master));
    }
    // Session affinity from outside the node is per client IP, as
    // kube-proxy's `recent` match: the address the packet carries.
    let client = || AFFINITY_CLIENT_IP | u64::from(pkt.saddr_be);
    let (backend_id, backend) =
        lb::pick_for(svc_addr_be, pkt.dport_be, pkt.proto, &master, client)?;
    let mut flow = NewFlow {
        backend_id,
        backend,
        rev_nat_id: master.rev_nat_id,
        snat_addr_be: None,
        reused,
    };
    let local = backend.state & BACKEND_FLAG_LOCAL != 0;
    if local || master.flags & svc_flags::ETP_LOCAL != 0 {
        // The stack forwards it; replies pass this node's client-facing
        // device, whose egress gives them the frontend back.
        let fwd = ct::create(pkt, &flow)?;
        count_new_flow(ctx, &flow);
        return Ok(rewritten(nat::dnat(ctx, pkt, fwd.addr_be, fwd.port_be)));
    }
    // Routed first: the SNAT source is the egress device's address.
    let hop = match route::lookup(ctx, pkt, backend.addr_be, backend.port_be) {
        Ok(hop) => hop,
        Err(miss) => return Ok(missed(ctx, pkt, miss)),
    };
    let snat_addr_be = match route::snat_addr(hop.ifindex) {
        0 => default_snat_be,
        addr => addr,
    };
    if snat_addr_be == 0 {
        return Err(counters::ERR_NO_SNAT_ADDR);
    }
    flow.snat_addr_be = Some(snat_addr_be);
    let fwd = ct::create(pkt, &flow)?;
    count_new_flow(ctx, &flow);
    Ok(translate_and_redirect(ctx, pkt, &fwd, &hop))
}

/// A new flow: the node-wide counter, its frontend's and its backend's.
#[inline(always)]
fn count_new_flow(ctx: &TcContext, flow: &NewFlow) {
    bump(counters::TC_NEW_FLOW);
    stats::service(flow.rev_nat_id, svc_stat::TC_FLOWS, 1);
    stats::backend(flow.rev_nat_id, flow.backend_id);
    count_packet(ctx, flow.rev_nat_id);
}

/// One packet of a flow of frontend `rev_nat_id`, and its bytes.
#[inline(always)]
fn count_packet(ctx: &TcContext, rev_nat_id: u16) {
    stats::service(rev_nat_id, svc_stat::TC_PACKETS, 1);
    stats::service(rev_nat_id, svc_stat::TC_BYTES, u64::from(ctx.len()));
}

/// Whether `saddr_be` is inside the frontend's `loadBalancerSourceRanges`
/// (only asked for frontends that have some).
#[inline(always)]
fn source_allowed(master: &ServiceValue, saddr_be: u32) -> bool {
    let key = Key::new(
        SourceRange::prefix_len(32),
        SourceRange {
            rev_nat_id_be: u32::from(master.rev_nat_id).to_be(),
            addr_be: saddr_be,
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// A frontend without any endpoint anywhere is refused at once, as
/// kube-proxy's REJECT, so clients fail fast instead of timing out. A
/// NodePort is on a node address where nothing listens on the port: the
/// node's own stack answers TCP with RST and UDP with ICMP port
/// unreachable. External IPs are usually not the node's, so the refusal is
/// built here. A Local policy without local endpoints must stay silent
/// (load balancers steer by health checks): that drops.
#[inline(always)]
fn no_endpoints(ctx: &TcContext, pkt: &Packet, svc_addr_be: u32, master: &ServiceValue) -> i32 {
    if master.flags & svc_flags::REJECT == 0 {
        bump(counters::TC_DROP_NO_ENDPOINTS);
        stats::service(master.rev_nat_id, svc_stat::DROPPED_NO_ENDPOINTS, 1);
        return DROP;
    }
    stats::service(master.rev_nat_id, svc_stat::REFUSED, 1);
    if svc_addr_be == 0 {
        bump(counters::TC_REJECT_NO_ENDPOINTS);
        return PASS;
    }
    let (action, reason) = refuse::refuse(ctx, pkt);
    bump(reason);
    action
}

/// The external frontend `pkt` addresses: (address its service-map keys
/// use, master entry, SNAT address for remote backends; 0 when none).
#[inline(always)]
fn frontend(pkt: &Packet) -> Option<(u32, ServiceValue, u32)> {
    // SAFETY: copied out at once.
    let node = unsafe { NODE_ADDRS.get(pkt.daddr_be) }.copied();
    if let Some(node) = node {
        if node.flags & node_flags::NODEPORT != 0 && pkt.daddr_be != 0 {
            let key = ServiceKey::master_raw(0, pkt.dport_be, pkt.proto);
            // SAFETY: copied out at once.
            if let Some(master) = unsafe { SERVICES.get(key) }.copied() {
                if master.flags & svc_flags::EXTERNAL != 0 {
                    return Some((0, master, node.snat_addr_be));
                }
            }
        }
    }
    let key = ServiceKey::master_raw(pkt.daddr_be, pkt.dport_be, pkt.proto);
    // SAFETY: copied out at once.
    let master = unsafe { SERVICES.get(key) }.copied()?;
    if master.flags & svc_flags::EXTERNAL == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    let snat = unsafe { NODE_ADDRS.get(0u32) }
        .map(|n| n.snat_addr_be)
        .unwrap_or(0);
    Some((pkt.daddr_be, master, snat))
}
