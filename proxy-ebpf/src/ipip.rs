//! IPIP packets on the NIC they arrive by. Replies of flows this node
//! forwarded over an IPIP tunnel (flannel's `ipip` backend, Calico's IPIP
//! mode) come back encapsulated; they are decapsulated here, at the
//! underlying NIC's ingress, and handled as any other reply.
//!
//! Not on the tunnel device: before Linux 5.14 a TC program on an IPIP
//! device still sees the outer Ethernet and IPv4 headers in front of the
//! inner packet, and cannot take the outer IPv4 header away
//! (`bpf_skb_adjust_room` cuts after the whole 34-byte "MAC header"); from
//! 5.14 on it sees the inner packet alone. At the NIC the packet looks the
//! same on every kernel: Ethernet, outer IPv4, inner IPv4.
use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO},
    helpers::bpf_skb_adjust_room,
    programs::TcContext,
};
use proxy_common::{ct_dir, proto};

use crate::{ct, l3, parse::ETH_HLEN};

/// The outer IPv4 header this decapsulates: no options.
const OUTER_HLEN: u32 = 20;
/// The IPv4 header's protocol byte.
const IP_PROTO: u32 = 9;

/// Whether the packet may be IPIP (one byte).
#[inline(always)]
pub fn maybe(ctx: &TcContext) -> bool {
    crate::parse::read::<u8>(ctx, (ETH_HLEN + IP_PROTO) as usize) == Some(proto::IPIP)
}

/// Removes the outer IPv4 header of an IPIP packet whose inner packet is a
/// reply of a flow the programs forwarded (conntrack `REPLY_SNAT`); false,
/// and the packet untouched, for anything else (the tunnel device gets it).
#[inline(always)]
pub fn decap_reply(ctx: &TcContext) -> Result<bool, i64> {
    let outer = ctx.load::<[u8; 8]>(ETH_HLEN as usize)?;
    // Version 4 without options, not a fragment (MF clear, offset 0).
    if outer[0] != 0x45 || outer[6] & 0x3f != 0 || outer[7] != 0 {
        return Ok(false);
    }
    let Some(inner) = l3::peek_at(ctx, ETH_HLEN + OUTER_HLEN) else {
        return Ok(false);
    };
    if ct::lookup(&inner, ct_dir::REPLY_SNAT).is_none() {
        return Ok(false);
    }
    // Shrinking at the MAC layer removes the bytes right after the
    // Ethernet header; FIXED_GSO keeps a GRO-merged packet's segment size
    // (its segments keep their length: only the outer header goes).
    // SAFETY: a plain helper call on this run's skb.
    let r = unsafe {
        bpf_skb_adjust_room(
            ctx.skb.skb,
            -(OUTER_HLEN as i32),
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
    };
    if r != 0 {
        return Err(r);
    }
    Ok(true)
}
