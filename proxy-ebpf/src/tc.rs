//! The TC programs: per-packet NodePort / externalIP / LoadBalancer
//! translation for traffic that did not start on a socket of this node.
//!
//! - `tc_ingress` (node devices, before routing): replies of SNATed flows
//!   get their client back as destination; packets of known flows and new
//!   packets to external frontends get DNATed to a backend.
//! - `tc_egress` (node devices, after routing): SNAT of forwarded packets to
//!   remote backends, and reverse NAT of replies (source back to the
//!   frontend). Source rewrites wait for egress because a packet entering
//!   with a node address as source is dropped as a martian.
//!
//! Both fail open: anything unknown or unparsable passes untouched, and an
//! internal error lets the packet through untouched with a counter bumped.
//! The one exception is a rewrite that fails halfway: that packet is
//! dropped, since sending it with mixed addresses or a wrong checksum is
//! worse.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    counters, ct_dir, node_flags, svc_flags, ServiceKey, ServiceValue, AFFINITY_CLIENT_IP,
    BACKEND_FLAG_LOCAL,
};

use crate::{
    counters::bump,
    ct::{self, NewFlow},
    lb,
    maps::{NODE_ADDRS, SERVICES},
    nat,
    parse::{parse, Packet, Parsed},
    refuse,
};

const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            bump(reason);
            PASS
        }
    }
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let pkt = match parse_or_pass(&ctx) {
        Some(pkt) => pkt,
        None => return PASS,
    };
    if let Some(entry) = ct::lookup(&pkt, ct_dir::REPLY) {
        ct::touch(entry, &pkt);
        // SAFETY: valid for this run (see ct::touch); fields copied out.
        let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
        return rewritten(nat::snat(&ctx, &pkt, addr_be, port_be));
    }
    if let Some(entry) = ct::lookup(&pkt, ct_dir::FORWARD_SNAT) {
        ct::touch(entry, &pkt);
        // SAFETY: as above.
        let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
        return rewritten(nat::snat(&ctx, &pkt, addr_be, port_be));
    }
    PASS
}

/// The parsed packet, or None (counted) for what passes untouched.
#[inline(always)]
fn parse_or_pass(ctx: &TcContext) -> Option<Packet> {
    match parse(ctx) {
        Parsed::Packet(pkt) => Some(pkt),
        Parsed::Other => None,
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
fn try_ingress(ctx: &TcContext) -> Result<i32, u32> {
    let Some(pkt) = parse_or_pass(ctx) else {
        return Ok(PASS);
    };
    if let Some(entry) = ct::lookup(&pkt, ct_dir::REPLY_SNAT) {
        ct::touch(entry, &pkt);
        // SAFETY: as in tc_egress.
        let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
        return Ok(rewritten(nat::dnat(ctx, &pkt, addr_be, port_be)));
    }
    if let Some(entry) = ct::lookup(&pkt, ct_dir::FORWARD) {
        // SAFETY: as above.
        let closed = unsafe { (*entry).tcp_state } == proxy_common::ct_state::CLOSING;
        // A SYN on a closed flow's 5-tuple is a new connection (port
        // reuse): it gets a fresh backend choice below.
        if !(closed && pkt.is_tcp_syn_only()) {
            ct::touch(entry, &pkt);
            // SAFETY: as above.
            let (addr_be, port_be) = unsafe { ((*entry).addr_be, (*entry).port_be) };
            return Ok(rewritten(nat::dnat(ctx, &pkt, addr_be, port_be)));
        }
    }
    let Some((svc_addr_be, master, snat_addr_be)) = frontend(&pkt) else {
        return Ok(PASS);
    };
    if master.count == 0 {
        // No endpoint anywhere: refuse at once, as kube-proxy's REJECT, so
        // clients fail fast instead of timing out. A NodePort is on a node
        // address where nothing listens on the port: the node's own stack
        // answers TCP with RST and UDP with ICMP port unreachable. External
        // IPs are usually not the node's, so the refusal is built here. A
        // Local policy without local endpoints must stay silent (load
        // balancers steer by health checks): that drops.
        if master.flags & svc_flags::REJECT != 0 {
            if svc_addr_be == 0 {
                bump(counters::TC_REJECT_NO_ENDPOINTS);
                return Ok(PASS);
            }
            let (action, reason) = refuse::refuse(ctx, &pkt);
            bump(reason);
            return Ok(action);
        }
        bump(counters::TC_DROP_NO_ENDPOINTS);
        return Ok(DROP);
    }
    // Session affinity from outside the node is per client IP, as
    // kube-proxy's `recent` match: the address the packet carries.
    let client = || AFFINITY_CLIENT_IP | u64::from(pkt.saddr_be);
    let (backend_id, backend) =
        lb::pick_for(svc_addr_be, pkt.dport_be, pkt.proto, &master, client)?;
    let local = backend.state & BACKEND_FLAG_LOCAL != 0;
    let snat_addr_be = if local || master.flags & svc_flags::ETP_LOCAL != 0 {
        None
    } else if snat_addr_be == 0 {
        return Err(counters::ERR_NO_SNAT_ADDR);
    } else {
        Some(snat_addr_be)
    };
    let flow = NewFlow {
        backend_id,
        backend,
        rev_nat_id: master.rev_nat_id,
        snat_addr_be,
    };
    let fwd = ct::create(&pkt, &flow)?;
    bump(counters::TC_NEW_FLOW);
    // With SNAT, the source is rewritten at egress (FORWARD_SNAT entry).
    Ok(rewritten(nat::dnat(ctx, &pkt, fwd.addr_be, fwd.port_be)))
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
