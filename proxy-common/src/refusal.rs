//! The answers the TC ingress program sends for a packet to an externalIP or
//! LoadBalancer IP whose Service has no endpoint anywhere.
//!
//! kube-proxy REJECTs such packets. For a NodePort the node's own stack can
//! do that (the destination is a local address and nothing listens on the
//! port), but an externalIP is usually not configured on the node, so the
//! kernel would forward or drop it. The program therefore builds the refusal
//! itself: a TCP RST, as the peer's stack would send for a closed port, and
//! an ICMP port unreachable for UDP. Either makes the client's `connect()` /
//! `recv()` fail with ECONNREFUSED at once instead of timing out.
//!
//! Pure functions over fixed-size arrays: tested on the host, and they
//! compile to panic-free BPF (every index is a constant).

use crate::{
    proto::{ICMP as IPPROTO_ICMP, TCP as IPPROTO_TCP},
    tcp_flags::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN},
};

/// Length of an IPv4 header without options, the only kind these build.
pub const IPV4_HLEN: usize = 20;
/// IPv4 header + TCP header without options.
pub const TCP_RST_LEN: usize = IPV4_HLEN + 20;
/// IPv4 header + ICMP header + the offending packet's IPv4 header (without
/// options) + the first 8 bytes of its payload (RFC 792).
pub const ICMP_UNREACH_LEN: usize = IPV4_HLEN + 8 + IPV4_HLEN + 8;

const TTL: u8 = 64;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

/// The TCP segment being refused, as it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Addresses and ports in wire order, as they sit in the packet.
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// Host order.
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Payload bytes after the TCP header.
    pub payload_len: u32,
}

/// The IPv4 + TCP headers of the RST answering `seg`, from its destination
/// back to its source (RFC 9293 3.10.7.1, "if the connection does not
/// exist"); None for a RST, which is never answered.
pub fn tcp_rst(seg: &TcpSegment) -> Option<[u8; TCP_RST_LEN]> {
    if seg.flags & TCP_RST != 0 {
        return None;
    }
    // With an ACK the RST takes its sequence number from it; without, it
    // acknowledges everything the segment occupied (SYN and FIN count one).
    let (seq, ack, flags) = if seg.flags & TCP_ACK != 0 {
        (seg.ack, 0, TCP_RST)
    } else {
        let len = seg
            .payload_len
            .wrapping_add(u32::from(seg.flags & TCP_SYN != 0))
            .wrapping_add(u32::from(seg.flags & TCP_FIN != 0));
        (0, seg.seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let mut out = [0u8; TCP_RST_LEN];
    write_ipv4_header(&mut out, IPPROTO_TCP, seg.daddr, seg.saddr);
    let tcp = IPV4_HLEN;
    out[tcp] = seg.dport[0];
    out[tcp + 1] = seg.dport[1];
    out[tcp + 2] = seg.sport[0];
    out[tcp + 3] = seg.sport[1];
    put_u32(&mut out, tcp + 4, seq);
    put_u32(&mut out, tcp + 8, ack);
    out[tcp + 12] = 5 << 4; // data offset: 20 bytes, no options
    out[tcp + 13] = flags;
    // Window, checksum and urgent pointer start as 0.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&seg.daddr);
    pseudo[4..8].copy_from_slice(&seg.saddr);
    pseudo[9] = IPPROTO_TCP;
    pseudo[11] = 20;
    let sum = add_words(add_words(0, &pseudo), &out[IPV4_HLEN..]);
    put_u16(&mut out, tcp + 16, finish(sum));
    Some(out)
}

/// The IPv4 + ICMP port unreachable answering a packet whose IPv4 header
/// (without options) is `ip` and whose first payload bytes are `l4`.
#[inline(always)]
pub fn icmp_port_unreachable(ip: &[u8; IPV4_HLEN], l4: &[u8; 8]) -> [u8; ICMP_UNREACH_LEN] {
    let mut out = [0u8; ICMP_UNREACH_LEN];
    icmp_unreachable(&mut out, ip, l4, ICMP_PORT_UNREACH, 0);
    out
}

/// The IPv4 + ICMP "fragmentation needed and DF set" (RFC 1191) answering
/// a packet that does not fit the next hop's `mtu`: the sender's path MTU
/// discovery lowers its packet size for that destination. It comes from
/// the address the packet was sent to, and quotes the packet as it was
/// sent, so the sender matches it to its own socket.
#[inline(always)]
pub fn icmp_frag_needed(ip: &[u8; IPV4_HLEN], l4: &[u8; 8], mtu: u16) -> [u8; ICMP_UNREACH_LEN] {
    let mut out = [0u8; ICMP_UNREACH_LEN];
    icmp_unreachable(&mut out, ip, l4, ICMP_FRAG_NEEDED, mtu);
    out
}

/// An ICMP destination unreachable with `code` (and, for "fragmentation
/// needed", the next-hop MTU in the second half of the unused word),
/// written into the caller's zeroed `out`. Not returned by value: a BPF
/// subprogram's own copy of it would grow its stack frame, and the TC
/// programs' call chains must fit 5.10's 512-byte limit (frames rounded up
/// to 32 bytes there).
fn icmp_unreachable(
    out: &mut [u8; ICMP_UNREACH_LEN],
    ip: &[u8; IPV4_HLEN],
    l4: &[u8; 8],
    code: u8,
    mtu: u16,
) {
    let mut saddr = [0u8; 4];
    let mut daddr = [0u8; 4];
    saddr.copy_from_slice(&ip[12..16]);
    daddr.copy_from_slice(&ip[16..20]);
    write_ipv4_header(out, IPPROTO_ICMP, daddr, saddr);
    let icmp = IPV4_HLEN;
    out[icmp] = ICMP_DEST_UNREACH;
    out[icmp + 1] = code;
    put_u16(out, icmp + 6, mtu);
    // Then the offending packet.
    out[icmp + 8..icmp + 8 + IPV4_HLEN].copy_from_slice(ip);
    out[icmp + 8 + IPV4_HLEN..].copy_from_slice(l4);
    // ICMP's checksum covers the ICMP message only, no pseudo-header.
    let sum = add_words(0, &out[icmp..]);
    put_u16(out, icmp + 2, finish(sum));
}

/// A 20-byte IPv4 header at the start of `out`, sized to `out`, with its
/// checksum. DF set and id 0, as Linux sends its own RSTs and ICMP errors.
fn write_ipv4_header(out: &mut [u8], proto: u8, saddr: [u8; 4], daddr: [u8; 4]) {
    let len = out.len() as u16;
    out[0] = 0x45;
    put_u16(out, 2, len);
    out[6] = 0x40; // DF
    out[8] = TTL;
    out[9] = proto;
    out[12..16].copy_from_slice(&saddr);
    out[16..20].copy_from_slice(&daddr);
    let sum = add_words(0, &out[..IPV4_HLEN]);
    put_u16(out, 10, finish(sum));
}

/// One's-complement sum of big-endian 16-bit words (an even length; the
/// callers' lengths all are). Carries fold in `finish`; at most 28 words
/// are summed, far from overflowing a u32.
fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    for w in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum
}

/// The Internet checksum of a word sum: carries folded, complemented.
fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checksum computed over data that includes it sums to 0.
    fn verifies(bytes: &[u8]) -> bool {
        finish(add_words(0, bytes)) == 0
    }

    fn syn() -> TcpSegment {
        TcpSegment {
            saddr: [192, 168, 50, 100],
            daddr: [203, 0, 113, 7],
            sport: 40000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            seq: 1000,
            ack: 0,
            flags: TCP_SYN,
            payload_len: 0,
        }
    }

    fn tcp_verifies(rst: &[u8; TCP_RST_LEN]) -> bool {
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&rst[12..20]);
        pseudo[9] = IPPROTO_TCP;
        pseudo[11] = 20;
        finish(add_words(add_words(0, &pseudo), &rst[IPV4_HLEN..])) == 0
    }

    #[test]
    fn a_syn_gets_a_rst_ack_for_its_sequence_number_plus_one() {
        let rst = tcp_rst(&syn()).unwrap();
        assert_eq!(rst[0], 0x45);
        assert_eq!(u16::from_be_bytes([rst[2], rst[3]]), 40);
        assert_eq!(rst[9], IPPROTO_TCP);
        assert_eq!(&rst[12..16], &[203, 0, 113, 7], "from the frontend");
        assert_eq!(&rst[16..20], &[192, 168, 50, 100], "to the client");
        assert_eq!(u16::from_be_bytes([rst[20], rst[21]]), 80);
        assert_eq!(u16::from_be_bytes([rst[22], rst[23]]), 40000);
        assert_eq!(u32::from_be_bytes([rst[24], rst[25], rst[26], rst[27]]), 0);
        assert_eq!(
            u32::from_be_bytes([rst[28], rst[29], rst[30], rst[31]]),
            1001
        );
        assert_eq!(rst[33], TCP_RST | TCP_ACK);
        assert!(verifies(&rst[..IPV4_HLEN]), "IPv4 header checksum");
        assert!(tcp_verifies(&rst), "TCP checksum");
    }

    #[test]
    fn a_segment_with_an_ack_gets_a_bare_rst_at_that_sequence_number() {
        let seg = TcpSegment {
            flags: TCP_ACK | 0x08,
            ack: 0xfffffff0,
            seq: 0xfffffffe,
            payload_len: 100,
            ..syn()
        };
        let rst = tcp_rst(&seg).unwrap();
        assert_eq!(
            u32::from_be_bytes([rst[24], rst[25], rst[26], rst[27]]),
            0xfffffff0
        );
        assert_eq!(rst[33], TCP_RST);
        assert!(tcp_verifies(&rst));
    }

    #[test]
    fn data_and_fin_without_ack_are_acknowledged_and_wrap() {
        let seg = TcpSegment {
            flags: TCP_FIN,
            seq: u32::MAX,
            payload_len: 10,
            ..syn()
        };
        let rst = tcp_rst(&seg).unwrap();
        assert_eq!(u32::from_be_bytes([rst[28], rst[29], rst[30], rst[31]]), 10);
    }

    #[test]
    fn a_rst_is_never_answered() {
        let seg = TcpSegment {
            flags: TCP_RST | TCP_ACK,
            ..syn()
        };
        assert_eq!(tcp_rst(&seg), None);
    }

    #[test]
    fn udp_gets_an_icmp_port_unreachable_quoting_the_datagram() {
        // A UDP datagram 192.168.50.100:5000 -> 203.0.113.7:53 (its own
        // header checksum is irrelevant here: it is quoted verbatim).
        let ip: [u8; 20] = [
            0x45, 0, 0, 33, 0x12, 0x34, 0x40, 0, 64, 17, 0xab, 0xcd, 192, 168, 50, 100, 203, 0,
            113, 7,
        ];
        let l4: [u8; 8] = [0x13, 0x88, 0, 53, 0, 13, 0xbe, 0xef];
        let icmp = icmp_port_unreachable(&ip, &l4);
        assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]), 56);
        assert_eq!(icmp[9], IPPROTO_ICMP);
        assert_eq!(&icmp[12..16], &[203, 0, 113, 7]);
        assert_eq!(&icmp[16..20], &[192, 168, 50, 100]);
        assert_eq!((icmp[20], icmp[21]), (3, 3), "port unreachable");
        assert_eq!(&icmp[28..48], &ip);
        assert_eq!(&icmp[48..56], &l4);
        assert!(verifies(&icmp[..IPV4_HLEN]), "IPv4 header checksum");
        assert!(verifies(&icmp[IPV4_HLEN..]), "ICMP checksum");
    }

    #[test]
    fn a_packet_too_big_gets_fragmentation_needed_with_the_next_hop_mtu() {
        let ip: [u8; 20] = [
            0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 6, 0xab, 0xcd, 192, 168, 50, 100, 192,
            168, 50, 13,
        ];
        let l4: [u8; 8] = [0x9c, 0x40, 0x75, 0x60, 0, 0, 0, 1];
        let icmp = icmp_frag_needed(&ip, &l4, 1450);
        assert_eq!(&icmp[12..16], &[192, 168, 50, 13], "from the address used");
        assert_eq!(&icmp[16..20], &[192, 168, 50, 100]);
        assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1450);
        assert_eq!(&icmp[28..48], &ip);
        assert!(verifies(&icmp[..IPV4_HLEN]), "IPv4 header checksum");
        assert!(verifies(&icmp[IPV4_HLEN..]), "ICMP checksum");
    }

    #[test]
    fn checksums_match_a_reference_with_odd_carries() {
        // RFC 1071's example words sum with carries to 0xddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(add_words(0, &bytes)), !0xddf2);
    }
}
