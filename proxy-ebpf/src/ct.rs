//! Conntrack for the TC programs: one LRU entry per flow and direction
//! (see `proxy_common::ct_dir`), so each program finds what to rewrite with
//! a single lookup of the packet's own 5-tuple.
//!
//! Two tables, as the kernel's conntrack keeps unconfirmed flows apart: a
//! new flow's entries go into `CT_NEW` and move to `CONNTRACK` when the
//! flow is confirmed (the client's ACK after its SYN; a second packet of a
//! UDP flow). A spoofed SYN flood never confirms, so it only churns
//! `CT_NEW`'s LRU and established flows keep their entries.
//!
//! A new flow asks the confirmed table whether its tuple or its SNAT port
//! is taken; `CT_FILTER` answers "certainly not" for most of them from a
//! few cached kilobytes (see `proxy_common::ct_filter`). Every insert into
//! the confirmed table goes through [`confirm`], which marks the filter.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    Global,
};
use proxy_common::{
    counters, ct_dir, ct_filter, ct_flags, ct_state, proto, BackendValue, CtKey, CtValue,
};

use crate::{
    clock::now_s,
    counters::bump,
    maps::{CONNTRACK, CT_FILTER, CT_NEW},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// SNAT ports tried per new flow: the client's own port first when it is in
/// the SNAT range, then random ones; bounded so the verifier sees a finite
/// loop.
const SNAT_PORT_TRIES: u32 = 8;

/// The SNAT port range, `bpfproxy run --snat-port-range`: set by the agent
/// at load, outside the node's ephemeral ports (which the agent reserves
/// for it), so a SNAT tuple never meets one of the node's own sockets.
#[unsafe(no_mangle)]
static SNAT_PORT_MIN: Global<u16> = Global::new(proxy_common::SNAT_PORT_MIN);
#[unsafe(no_mangle)]
static SNAT_PORT_MAX: Global<u16> = Global::new(proxy_common::SNAT_PORT_MAX);

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

/// The entry of `pkt`'s tuple in direction `dir`, confirmed or new.
#[inline(always)]
pub fn lookup(pkt: &Packet, dir: u8) -> Option<*mut CtValue> {
    get(&key(pkt, dir))
}

/// The entry under `k` in either table (confirmed first). A flow that
/// another CPU is confirming right now is written to the confirmed table
/// before it leaves the new one: when both lookups miss, the second look
/// at the confirmed table finds it (else this packet would pass untouched
/// or start the flow anew).
#[inline(always)]
pub fn get(k: &CtKey) -> Option<*mut CtValue> {
    CONNTRACK
        .get_ptr_mut(k)
        .or_else(|| CT_NEW.get_ptr_mut(k))
        .or_else(|| CONNTRACK.get_ptr_mut(k))
}

/// What the FORWARD entry of a packet's flow asks before the packet is
/// translated.
pub enum Forward {
    /// Translate as the entry says.
    Go(*mut CtValue),
    /// First [`settle`]: the packet confirms a new flow, or a confirmed
    /// flow's once-a-second check of its reply entry is due.
    Settle,
}

/// The FORWARD entry of `pkt`'s flow, if any. `may_settle` false: the
/// settling just happened for this packet, translate whatever is due.
#[inline(always)]
pub fn lookup_forward(pkt: &Packet, may_settle: bool) -> Option<Forward> {
    let k = key(pkt, ct_dir::FORWARD);
    // A bare SYN's tuple is in the confirmed table only when a closed
    // flow's tuple is reused: the filter rules that out for most SYNs.
    // (A retransmitted SYN racing its flow's confirmation on another CPU
    // may then start a flow anew; the confirmed entry shadows it.)
    let maybe_confirmed = !pkt.is_tcp_syn_only() || may_be_confirmed(&k);
    if maybe_confirmed {
        if let Some(e) = CONNTRACK.get_ptr_mut(k) {
            return Some(confirmed(e, may_settle));
        }
    }
    if let Some(e) = CT_NEW.get_ptr_mut(k) {
        return Some(if confirms(pkt) && may_settle {
            Forward::Settle
        } else {
            Forward::Go(e)
        });
    }
    if !maybe_confirmed {
        return None;
    }
    // A flow confirmed meanwhile on another CPU (see `get`).
    CONNTRACK.get_ptr_mut(k).map(|e| confirmed(e, may_settle))
}

/// False when the confirmed table certainly does not hold `k` (its cell
/// in the filter's active generation is clear); true when it may, or when
/// no generation is trusted yet.
#[inline(always)]
fn may_be_confirmed(k: &CtKey) -> bool {
    let Some(f) = CT_FILTER.get_ptr(0) else {
        return true;
    };
    // SAFETY: an array value, valid memory for the whole run; a byte read
    // racing the agent's writes sees either value, both safe (see
    // `proxy_common::ct_filter`).
    let state = unsafe { (*f).state };
    let Some(gen) = ct_filter::CtFilter::active_gen(state) else {
        return true;
    };
    // SAFETY: as above.
    let cells = unsafe { &(*f).cells };
    match cells.get(gen).and_then(|g| g.get(ct_filter::cell(k))) {
        Some(&c) => c != 0,
        None => true,
    }
}

/// Marks `k` in both generations of the filter, then inserts it into the
/// confirmed table. Marked first: a program that finds `k` gone from the
/// new-flow table (moved here) and reads the filter after that sees the
/// mark (the bucket locks between order them), and an agent rebuilding a
/// generation it cleared meanwhile finds the entry in its walk, which
/// waits until every program run in flight has ended.
#[inline(always)]
fn confirm(k: &CtKey, v: &CtValue, flags: u32) -> bool {
    if let Some(f) = CT_FILTER.get_ptr_mut(0) {
        let c = ct_filter::cell(k);
        // SAFETY: as in `may_be_confirmed`; single byte stores.
        let cells = unsafe { &mut (*f).cells };
        for g in cells.iter_mut() {
            if let Some(cell) = g.get_mut(c) {
                *cell = 1;
            }
        }
    }
    CONNTRACK.insert(k, v, u64::from(flags)).is_ok()
}

/// What a confirmed flow's FORWARD entry `e` asks: once a second, settle.
#[inline(always)]
fn confirmed(e: *mut CtValue, may_settle: bool) -> Forward {
    // SAFETY: valid for this run (LRU entries are RCU-freed).
    let due = unsafe { (*e).last_seen_s } != now_s();
    if due && may_settle {
        Forward::Settle
    } else {
        Forward::Go(e)
    }
}

/// For a packet [`lookup_forward`] asked to settle: confirms its new flow
/// (moves both entries to the confirmed table) or checks that a confirmed
/// flow's reply entry is there and its own, and stamps the flow's second.
/// False when the flow's SNAT port belongs to another flow now: the caller
/// ends this one. Its own call from the program's top: its frame never
/// stacks on the translation's (5.10 allows 512 bytes per call chain).
#[inline(never)]
pub fn settle(pkt: &Packet) -> bool {
    let k = key(pkt, ct_dir::FORWARD);
    let (e, new) = match CONNTRACK.get_ptr_mut(k) {
        Some(e) => (e, false),
        None => match CT_NEW.get_ptr_mut(k) {
            Some(e) => (e, true),
            None => return true,
        },
    };
    // SAFETY: valid for this run (LRU entries are RCU-freed); copied out.
    let v = unsafe { *e };
    if !settle_partner(&k, &v) {
        return false;
    }
    if new {
        if confirm(&k, &v, BPF_ANY) {
            let _ = CT_NEW.remove(k);
            bump(counters::TC_CT_CONFIRMED);
        }
    } else {
        // SAFETY: as above; the check is done for this second.
        unsafe { (*e).last_seen_s = now_s() };
    }
    true
}

/// Removes `pkt`'s FORWARD entry from both tables.
#[inline(always)]
pub fn forget_forward(pkt: &Packet) {
    let k = key(pkt, ct_dir::FORWARD);
    let _ = CONNTRACK.remove(k);
    let _ = CT_NEW.remove(k);
}

/// Whether a later client packet of a new flow confirms it: for TCP an ACK
/// without SYN (the handshake's last step; a retransmitted SYN does not),
/// for other protocols any second packet.
#[inline(always)]
fn confirms(pkt: &Packet) -> bool {
    pkt.proto != proto::TCP || pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
}

/// Puts the other direction of a flow (FORWARD entry `k`, `v`) into the
/// confirmed table: moved from the new one, or written again when the LRU
/// evicted it. For a SNATed flow that entry is the reservation of its SNAT
/// port: false when another flow holds that port now, so the caller ends
/// this flow rather than mix the two.
#[inline(always)]
fn settle_partner(k: &CtKey, v: &CtValue) -> bool {
    let Some(pk) = k.partner(v) else {
        return true;
    };
    let rebuilt = partner_value(k, v);
    let ours = |e: &CtValue| e.addr_be == rebuilt.addr_be && e.port_be == rebuilt.port_be;
    // SAFETY: copied out at once.
    if let Some(cur) = unsafe { CONNTRACK.get(pk) } {
        return ours(cur);
    }
    // SAFETY: as above.
    let value = match unsafe { CT_NEW.get(pk) }.copied() {
        Some(cur) if ours(&cur) => cur,
        Some(_) => return false,
        None => rebuilt,
    };
    let moved = confirm(&pk, &value, BPF_NOEXIST);
    let _ = CT_NEW.remove(pk);
    // Two packets of one flow settling at once on two CPUs (the client's
    // ACK and its first data): the other may have moved the entry between
    // the lookup above and the insert. It is ours if it is there as ours.
    // SAFETY: copied out at once.
    moved || unsafe { CONNTRACK.get(pk) }.is_some_and(ours)
}

/// The entry the other direction of a flow holds, rebuilt from its FORWARD
/// entry; `create` makes the reply entry with it too.
#[inline(always)]
fn partner_value(k: &CtKey, v: &CtValue) -> CtValue {
    let snat = v.flags & ct_flags::SNAT != 0;
    CtValue {
        // REPLY_SNAT: back to the client; REPLY: from the frontend.
        addr_be: if snat { k.saddr_be } else { k.daddr_be },
        port_be: if snat { k.sport_be } else { k.dport_be },
        flags: v.flags & ct_flags::REDIRECT,
        tcp_state: v.tcp_state,
        nat_addr_be: if snat { k.daddr_be } else { 0 },
        nat_port_be: if snat { k.dport_be } else { 0 },
        rev_nat_id: v.rev_nat_id,
        backend_id: v.backend_id,
        last_seen_s: v.last_seen_s,
    }
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
    /// A SYN on the tuple of a closed flow, whose confirmed entry may still
    /// be there (else no entry was: the lookup just missed in both tables).
    pub reused: bool,
}

/// Creates every entry of a new flow (in the new-flow table) and returns
/// the FORWARD value to apply. Reply-side entries go in first: when the
/// first packet leaves, its reply can already be translated. Err carries a
/// counter reason; entries already written are removed again (best effort,
/// they are LRU anyway).
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
    let fwd_key = key(pkt, ct_dir::FORWARD);
    let mut fwd = entry(be.addr_be, be.port_be);
    // The reply entry is the forward one's partner, as a move to the
    // confirmed table rebuilds it: the same function makes both.
    let reply_key = match flow.snat_addr_be {
        None => {
            let k = reply_key(pkt, be);
            insert(k, &partner_value(&fwd_key, &fwd))?;
            k
        }
        Some(snat_addr_be) => {
            fwd.flags = ct_flags::SNAT | ct_flags::REDIRECT;
            fwd.nat_addr_be = snat_addr_be;
            let back = partner_value(&fwd_key, &fwd);
            let port_be = match reserve_snat_port(pkt, be, snat_addr_be, &back) {
                0 => return Err(counters::ERR_SNAT_PORT),
                port_be => port_be as u16,
            };
            fwd.nat_port_be = port_be;
            reply_snat_key(pkt, be, snat_addr_be, port_be)
        }
    };
    // A closed flow's tuple reused: its confirmed entry must not shadow
    // the new one.
    if flow.reused {
        let _ = CONNTRACK.remove(fwd_key);
    }
    if let Err(reason) = insert(fwd_key, &fwd) {
        let _ = CT_NEW.remove(reply_key);
        return Err(reason);
    }
    Ok(fwd)
}

#[inline(always)]
fn insert(k: CtKey, v: &CtValue) -> Result<(), u32> {
    CT_NEW
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
/// REPLY_SNAT entry with BPF_NOEXIST in the new-flow table: the client's
/// own port when it is in the SNAT range and free (or already this
/// client's, e.g. a reused closed flow), else random ones in the range. A
/// port a confirmed flow holds is never taken. Returns the port (network
/// order), 0 when none was free.
#[inline(always)]
fn reserve_snat_port(pkt: &Packet, be: &BackendValue, snat_addr_be: u32, value: &CtValue) -> u32 {
    let value = *value;
    let (min, max) = (SNAT_PORT_MIN.load(), SNAT_PORT_MAX.load());
    let span = u64::from(max.saturating_sub(min)) + 1;
    let client_port = u16::from_be(pkt.sport_be);
    let mut port = if client_port >= min && client_port <= max {
        client_port
    } else {
        random_port(min, span)
    };
    for _ in 0..SNAT_PORT_TRIES {
        let k = reply_snat_key(pkt, be, snat_addr_be, port.to_be());
        match claim(&k, &value, pkt) {
            Claim::Taken => port = random_port(min, span),
            Claim::Ours => return u32::from(port.to_be()),
            Claim::Failed => return 0,
        }
    }
    0
}

enum Claim {
    Ours,
    Taken,
    Failed,
}

/// One try of [`reserve_snat_port`] on the reply key `k`: our entry goes
/// into the new-flow table first, then the confirmed table is asked. In
/// that order, a flow being confirmed with this port on another CPU is
/// either still in the new-flow table (the insert fails) or already
/// marked in the filter and in the confirmed table.
#[inline(always)]
fn claim(k: &CtKey, value: &CtValue, pkt: &Packet) -> Claim {
    let theirs = |e: &CtValue| e.addr_be != pkt.saddr_be || e.port_be != pkt.sport_be;
    if CT_NEW.insert(k, value, BPF_NOEXIST as u64).is_err() {
        // SAFETY: copied out at once.
        match unsafe { CT_NEW.get(k) }.copied() {
            Some(old) if !theirs(&old) => {
                if CT_NEW.insert(k, value, BPF_ANY as u64).is_err() {
                    return Claim::Failed;
                }
            }
            _ => return Claim::Taken,
        }
    }
    if !may_be_confirmed(k) {
        return Claim::Ours;
    }
    // SAFETY: copied out at once.
    match unsafe { CONNTRACK.get(k) } {
        Some(held) if theirs(held) => {
            let _ = CT_NEW.remove(k);
            Claim::Taken
        }
        _ => Claim::Ours,
    }
}

/// A random port in `min..min + span`; multiply-shift instead of `%`, so
/// the verifier sees no division.
#[inline(always)]
fn random_port(min: u16, span: u64) -> u16 {
    // SAFETY: helper without preconditions.
    let rand = u64::from(unsafe { bpf_get_prandom_u32() });
    (u64::from(min) + ((rand * span) >> 32)) as u16
}
