//! Conntrack for the TC programs: one LRU entry per flow and direction
//! (see `proxy_common::ct_dir`), so each program finds what to rewrite with
//! a single lookup of the packet's own 5-tuple.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use proxy_common::{counters, ct_dir, ct_flags, ct_state, proto, BackendValue, CtKey, CtValue};

use crate::{
    maps::CONNTRACK,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// SNAT ports tried per new flow: the client's own port first, then random
/// ones; bounded so the verifier sees a finite loop.
const SNAT_PORT_TRIES: u32 = 4;
/// Random SNAT ports come from 1024..65535.
const SNAT_PORT_MIN: u32 = 1024;
const SNAT_PORT_SPAN: u64 = 65_535 - SNAT_PORT_MIN as u64;

#[inline(always)]
pub fn key(pkt: &Packet, dir: u8) -> CtKey {
    CtKey {
        saddr_be: pkt.saddr_be,
        daddr_be: pkt.daddr_be,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
pub fn lookup(pkt: &Packet, dir: u8) -> Option<*mut CtValue> {
    CONNTRACK.get_ptr_mut(key(pkt, dir))
}

/// Seconds of the monotonic clock, as in the affinity map.
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: helper without preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// The TCP state after `pkt` in the direction of an entry in state `cur`.
#[inline(always)]
pub fn next_state(cur: u8, pkt: &Packet) -> u8 {
    if pkt.proto != proto::TCP {
        ct_state::NONE
    } else if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct_state::CLOSING
    } else if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        ct_state::SYN_SENT
    } else if cur == ct_state::CLOSING {
        ct_state::CLOSING
    } else {
        ct_state::ESTABLISHED
    }
}

/// Refreshes the last-seen time and TCP state of the entry `pkt` matched.
/// Writes only on change: most packets of a busy flow then leave the
/// entry's cache line alone.
#[inline(always)]
pub fn touch(entry: *mut CtValue, pkt: &Packet) {
    let now = now_s();
    // SAFETY: `entry` came from a map lookup of this program run; LRU
    // entries stay valid memory for the rest of the run (RCU).
    unsafe {
        if (*entry).last_seen_s != now {
            (*entry).last_seen_s = now;
        }
        let state = next_state((*entry).tcp_state, pkt);
        if (*entry).tcp_state != state {
            (*entry).tcp_state = state;
        }
    }
}

/// What the load balancer chose for a new flow.
pub struct NewFlow {
    pub backend_id: u32,
    pub backend: BackendValue,
    pub rev_nat_id: u16,
    /// The node address to SNAT to, when the backend is on another node.
    pub snat_addr_be: Option<u32>,
}

/// Creates every entry of a new flow and returns the FORWARD value to apply.
/// Reply-side entries go in first: when the first packet leaves, its reply
/// can already be translated. Err carries a counter reason; entries already
/// written are removed again (best effort, they are LRU anyway).
///
/// Without SNAT the stack forwards the flow: FORWARD (destination at
/// ingress) and REPLY (source at the client-facing egress). With SNAT the
/// program forwards it itself (`ct_flags::REDIRECT`): FORWARD rewrites both
/// ends at ingress, REPLY_SNAT both ends of the reply wherever it comes in.
#[inline(always)]
pub fn create(pkt: &Packet, flow: &NewFlow) -> Result<CtValue, u32> {
    let now = now_s();
    let tcp_state = next_state(ct_state::NONE, pkt);
    let entry = |addr_be: u32, port_be: u16| CtValue {
        addr_be,
        port_be,
        flags: 0,
        tcp_state,
        nat_addr_be: 0,
        nat_port_be: 0,
        rev_nat_id: flow.rev_nat_id,
        backend_id: flow.backend_id,
        last_seen_s: now,
    };
    let be = &flow.backend;
    let mut fwd = entry(be.addr_be, be.port_be);
    let reply_key = match flow.snat_addr_be {
        None => {
            let k = reply_key(pkt, be);
            insert(k, &entry(pkt.daddr_be, pkt.dport_be))?;
            k
        }
        Some(snat_addr_be) => {
            // The reply's destination goes back to the client, its source
            // to the frontend the client addressed.
            let mut back = entry(pkt.saddr_be, pkt.sport_be);
            back.flags = ct_flags::REDIRECT;
            back.nat_addr_be = pkt.daddr_be;
            back.nat_port_be = pkt.dport_be;
            let Some(port_be) = reserve_snat_port(pkt, be, snat_addr_be, &back) else {
                return Err(counters::ERR_SNAT_PORT);
            };
            fwd.flags = ct_flags::SNAT | ct_flags::REDIRECT;
            fwd.nat_addr_be = snat_addr_be;
            fwd.nat_port_be = port_be;
            reply_snat_key(pkt, be, snat_addr_be, port_be)
        }
    };
    if let Err(reason) = insert(key(pkt, ct_dir::FORWARD), &fwd) {
        let _ = CONNTRACK.remove(reply_key);
        return Err(reason);
    }
    Ok(fwd)
}

#[inline(always)]
fn insert(k: CtKey, v: &CtValue) -> Result<(), u32> {
    CONNTRACK
        .insert(k, *v, BPF_ANY as u64)
        .map_err(|_| counters::ERR_CT_UPDATE)
}

/// The backend → client tuple of a flow without SNAT, as the reply leaves
/// by the client-facing device.
#[inline(always)]
fn reply_key(pkt: &Packet, be: &BackendValue) -> CtKey {
    CtKey {
        saddr_be: be.addr_be,
        daddr_be: pkt.saddr_be,
        sport_be: be.port_be,
        dport_be: pkt.sport_be,
        proto: pkt.proto,
        dir: ct_dir::REPLY,
        _pad: 0,
    }
}

/// The backend → SNAT address tuple as the reply arrives.
#[inline(always)]
fn reply_snat_key(pkt: &Packet, be: &BackendValue, snat_addr_be: u32, port_be: u16) -> CtKey {
    CtKey {
        saddr_be: be.addr_be,
        daddr_be: snat_addr_be,
        sport_be: be.port_be,
        dport_be: port_be,
        proto: pkt.proto,
        dir: ct_dir::REPLY_SNAT,
        _pad: 0,
    }
}

/// Claims a source port on `snat_addr` towards this backend by creating the
/// REPLY_SNAT entry with BPF_NOEXIST: the client's own port when free (or
/// already this client's, e.g. a reused closed flow), else a random one.
#[inline(always)]
fn reserve_snat_port(
    pkt: &Packet,
    be: &BackendValue,
    snat_addr_be: u32,
    value: &CtValue,
) -> Option<u16> {
    let value = *value;
    let mut port_be = pkt.sport_be;
    for _ in 0..SNAT_PORT_TRIES {
        let k = reply_snat_key(pkt, be, snat_addr_be, port_be);
        if CONNTRACK.insert(k, value, BPF_NOEXIST as u64).is_ok() {
            return Some(port_be);
        }
        // SAFETY: copied out at once.
        if let Some(old) = unsafe { CONNTRACK.get(k) }.copied() {
            if old.addr_be == pkt.saddr_be && old.port_be == pkt.sport_be {
                if CONNTRACK.insert(k, value, BPF_ANY as u64).is_ok() {
                    return Some(port_be);
                }
                return None;
            }
        }
        // SAFETY: helper without preconditions.
        let rand = unsafe { bpf_get_prandom_u32() } as u64;
        // Multiply-shift instead of `%`: no division for the verifier.
        port_be = ((SNAT_PORT_MIN as u64 + ((rand * SNAT_PORT_SPAN) >> 32)) as u16).to_be();
    }
    None
}
