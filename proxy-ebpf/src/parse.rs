//! Ethernet/IPv4/TCP/UDP parsing for the TC programs.
//!
//! Headers at fixed offsets are read straight from the linear data when
//! it holds them (nearly always), anything else through
//! `bpf_skb_load_bytes`, which checks the offset against the packet's
//! length itself and reads paged data too: a truncated packet makes a read
//! fail (and the packet pass untouched), never reads out of bounds.
use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use proxy_common::{icmp_error, proto};

pub const ETH_HLEN: u32 = 14;
/// Offset of the EtherType in the Ethernet header.
const ETH_TYPE_OFF: usize = 12;
const ETH_P_IP: u16 = 0x0800;
/// Offsets inside the IPv4 header.
pub const IP_CSUM_OFF: u32 = ETH_HLEN + 10;
pub const IP_SADDR_OFF: u32 = ETH_HLEN + 12;
pub const IP_DADDR_OFF: u32 = ETH_HLEN + 16;
pub const IP_TTL_OFF: u32 = ETH_HLEN + 8;
const IP_MIN_HLEN: u32 = 20;
const TCP_MIN_HLEN: u32 = 20;
const UDP_HLEN: u32 = 8;
/// More-fragments flag and fragment offset of `frag_off`.
const IP_MF_OFFSET: u16 = 0x3fff;
/// Don't-fragment flag of `frag_off`.
const IP_DF: u16 = 0x4000;

pub use proxy_common::tcp_flags::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};

/// An IPv4 TCP or UDP packet whose headers are complete; for an ICMP error
/// (`proto` ICMP) the outer header, `l4_off` at the ICMP header, no ports.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the TCP/UDP header (after IP options, if any).
    pub l4_off: u32,
    /// Bytes from the TCP/UDP header to the end of the IP datagram.
    pub l4_len: u32,
    pub proto: u8,
    pub tcp_flags: u8,
    /// The IPv4 header's time to live and protocol, as the 16-bit word
    /// the header checksum covers (for the TTL decrement on forwarding).
    pub ttl_proto_be: u16,
    /// Don't fragment: a packet too big for the next hop is answered with
    /// "fragmentation needed" instead of being fragmented.
    pub df: bool,
    /// The IPv4 header checksum as the packet holds it (raw), so a rewrite
    /// can write it together with the fields around it.
    pub ip_csum_raw: u16,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

impl Packet {
    pub fn sport_off(&self) -> u32 {
        self.l4_off
    }
    pub fn dport_off(&self) -> u32 {
        self.l4_off + 2
    }
    /// Offset of the L4 checksum field.
    pub fn csum_off(&self) -> u32 {
        if self.proto == proto::TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
    pub fn is_tcp_syn_only(&self) -> bool {
        self.proto == proto::TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

pub enum Parsed {
    /// Not IPv4, or IPv4 but neither TCP nor UDP: not ours.
    Other,
    /// An IPv4 fragment: only the first carries ports, and translating it
    /// alone would break reassembly, so fragments pass untouched.
    Fragment,
    /// Lengths that do not add up (truncated, bad IHL or data offset).
    Malformed,
    Packet(Packet),
    /// An ICMP error with its 8-byte ICMP header (the quote is read by
    /// `icmp`): it may be about a translated flow.
    IcmpError(Packet),
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    // The EtherType and the fixed part of the IPv4 header in one read;
    // indexing the array with constants has no bounds-check path.
    let Some(head) = read::<[u8; 22]>(ctx, ETH_TYPE_OFF) else {
        return too_short(ctx);
    };
    if u16::from_ne_bytes([head[0], head[1]]) != ETH_P_IP.to_be() {
        return Parsed::Other;
    }
    let ip = [
        head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11],
        head[12], head[13], head[14], head[15], head[16], head[17], head[18], head[19], head[20],
        head[21],
    ];
    if ip[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((ip[0] & 0x0f) as u32) * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    if ihl < IP_MIN_HLEN || tot_len < ihl || ETH_HLEN + tot_len > ctx.len() {
        return Parsed::Malformed;
    }
    let proto = ip[9];
    if proto != proto::TCP && proto != proto::UDP && proto != proto::ICMP {
        return Parsed::Other;
    }
    let frag_off = u16::from_be_bytes([ip[6], ip[7]]);
    if frag_off & IP_MF_OFFSET != 0 {
        // A fragmented ICMP message (a big ping) is nothing of ours.
        if proto == proto::ICMP {
            return Parsed::Other;
        }
        return Parsed::Fragment;
    }
    let l4_off = ETH_HLEN + ihl;
    let l4_len = tot_len - ihl;
    let base = Packet {
        l4_off,
        l4_len,
        proto,
        tcp_flags: 0,
        ttl_proto_be: u16::from_ne_bytes([ip[8], ip[9]]),
        df: frag_off & IP_DF != 0,
        ip_csum_raw: u16::from_ne_bytes([ip[10], ip[11]]),
        saddr_be: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr_be: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport_be: 0,
        dport_be: 0,
    };
    if proto == proto::ICMP {
        icmp(ctx, base)
    } else {
        transport(ctx, base)
    }
}

/// A frame too short for an IPv4 header: not ours unless it says IPv4.
#[inline(always)]
fn too_short(ctx: &TcContext) -> Parsed {
    match ctx.load::<u16>(ETH_TYPE_OFF) {
        Ok(ethertype) if ethertype == ETH_P_IP.to_be() => Parsed::Malformed,
        _ => Parsed::Other,
    }
}

/// The TCP/UDP part of [`parse`]: `pkt` with its flags and ports, once the
/// header is known to be complete.
#[inline(always)]
fn transport(ctx: &TcContext, mut pkt: Packet) -> Parsed {
    if pkt.proto == proto::TCP {
        let Some(tcp) = read_l4::<[u8; 14]>(ctx, pkt.l4_off) else {
            return Parsed::Malformed;
        };
        let doff = ((tcp[12] >> 4) as u32) * 4;
        if doff < TCP_MIN_HLEN || pkt.l4_len < doff {
            return Parsed::Malformed;
        }
        pkt.tcp_flags = tcp[13];
        // The ports lead the header just read.
        pkt.sport_be = u16::from_ne_bytes([tcp[0], tcp[1]]);
        pkt.dport_be = u16::from_ne_bytes([tcp[2], tcp[3]]);
        return Parsed::Packet(pkt);
    }
    if pkt.l4_len < UDP_HLEN {
        return Parsed::Malformed;
    }
    let Some(ports) = read_l4::<[u8; 4]>(ctx, pkt.l4_off) else {
        return Parsed::Malformed;
    };
    pkt.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    pkt.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Parsed::Packet(pkt)
}

/// The ICMP part of [`parse`]: errors only, with their 8-byte header.
#[inline(always)]
fn icmp(ctx: &TcContext, mut pkt: Packet) -> Parsed {
    let Ok(icmp_type) = ctx.load::<u8>(pkt.l4_off as usize) else {
        return Parsed::Other;
    };
    if !icmp_error::is_error(icmp_type) {
        return Parsed::Other;
    }
    if pkt.l4_len < icmp_error::ICMP_HLEN as u32 {
        return Parsed::Malformed;
    }
    // Never answered with "fragmentation needed" (RFC 1122: no ICMP error
    // about an ICMP error): too big for the next hop means dropped.
    pkt.df = false;
    Parsed::IcmpError(pkt)
}

/// Offset of the TCP/UDP header behind an IPv4 header without options.
const L4_OFF_PLAIN: u32 = ETH_HLEN + IP_MIN_HLEN;

/// The `T` at `off` (a constant) of the packet: straight from the linear
/// data when it holds those bytes (no helper call: the headers of nearly
/// every packet are there), else through `bpf_skb_load_bytes`, which also
/// reads paged data. None when the packet is shorter.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie inside the linear data, checked just above
        // (the verifier checks it too); unaligned read of plain bytes.
        return Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).ok()
}

/// [`read`] of the transport header at `l4_off`: direct only behind an
/// IPv4 header without options, whose offset is a constant the verifier
/// checks simply; after options, through the helper.
#[inline(always)]
fn read_l4<T: Copy>(ctx: &TcContext, l4_off: u32) -> Option<T> {
    if l4_off == L4_OFF_PLAIN {
        return read::<T>(ctx, L4_OFF_PLAIN as usize);
    }
    ctx.load::<T>(l4_off as usize).ok()
}
