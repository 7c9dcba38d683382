//! Reverse translation of ICMP errors that quote a translated flow.
//!
//! An ICMP error (destination unreachable — "fragmentation needed"
//! included —, time exceeded, parameter problem) quotes the IPv4 header and
//! the first 8 L4 bytes of the packet that caused it, and goes back to that
//! packet's source. When that packet was translated by the TC programs, the
//! error names addresses its receiver never used: a router between this node
//! and a backend on another node reports about `SNAT address → backend`,
//! and a router on the client's side about `frontend → client`. Without the
//! reverse translation the sender's path MTU discovery never learns about
//! the smaller hop and the connection stalls (a PMTU black hole).
//!
//! The error travels like a packet of the flow in the direction opposite to
//! the quoted one, so it gets that direction's rewrite, as netfilter's NAT
//! gives related ICMP errors: the outer header's destination (and source)
//! as such a packet's, and the quoted header the inverse, so it reads as
//! the packet its receiver sent. The checksums are updated incrementally:
//! the outer IPv4 header's, the quoted IPv4 header's, the quoted UDP
//! checksum (inside the 8 quoted bytes; 0 stays 0), the quoted TCP checksum
//! only when the quote holds it (most errors quote only 8 L4 bytes, and
//! Linux verifies neither), and the ICMP checksum, which covers the quote.
//!
//! Pure functions over fixed-size arrays: tested on the host, and they
//! compile to panic-free BPF (every index is a constant).

use crate::{ct_dir, ct_flags, CtValue};

/// Length of the fixed IPv4 header (options are never rewritten).
pub const IPV4_HLEN: usize = 20;
/// ICMP header: type, code, checksum, 4 more bytes.
pub const ICMP_HLEN: usize = 8;
/// The L4 bytes an ICMP error is sure to quote (RFC 792).
pub const QUOTED_L4_LEN: usize = 8;

/// ICMP types that are errors quoting the offending packet, and that the
/// programs translate.
pub mod icmp_type {
    pub const DEST_UNREACH: u8 = 3;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Whether an ICMP message of `icmp_type` is an error quoting a packet.
#[inline(always)]
pub const fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        icmp_type::DEST_UNREACH | icmp_type::TIME_EXCEEDED | icmp_type::PARAMETER_PROBLEM
    )
}

/// An address and port in network byte order, as map entries and the
/// packet hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr_be: u32,
    pub port_be: u16,
}

/// What a packet of the flow travelling the way the error travels gets:
/// a new destination, a new source, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub dst: Option<Endpoint>,
    pub src: Option<Endpoint>,
}

/// The rewrite of the conntrack entry `e`, found under direction `dir` with
/// the quoted tuple reversed (the tuple of a packet travelling the way the
/// error travels); None when the entry's direction does not translate such
/// packets in one step (entries of earlier versions).
///
/// - FORWARD: client → frontend becomes client → backend; with REDIRECT
///   also SNAT address → backend (an error about a reply, from the
///   client's side, goes to the backend).
/// - REPLY_SNAT (REDIRECT only): backend → SNAT address becomes frontend →
///   client (an error about a forwarded packet, from the backend's side,
///   goes to the client).
/// - REPLY: backend → client becomes frontend → client (an error the node
///   or a local backend sends about a DNATed packet).
#[inline(always)]
pub fn rewrite_for(dir: u8, e: &CtValue) -> Option<Rewrite> {
    let to = Endpoint {
        addr_be: e.addr_be,
        port_be: e.port_be,
    };
    let nat = Endpoint {
        addr_be: e.nat_addr_be,
        port_be: e.nat_port_be,
    };
    let redirect = e.flags & ct_flags::REDIRECT != 0;
    match dir {
        // SNAT without REDIRECT: an earlier version's flow, SNATed at egress.
        ct_dir::FORWARD if e.flags & ct_flags::SNAT != 0 && !redirect => None,
        ct_dir::FORWARD => Some(Rewrite {
            dst: Some(to),
            src: redirect.then_some(nat),
        }),
        ct_dir::REPLY_SNAT if redirect => Some(Rewrite {
            dst: Some(to),
            src: Some(nat),
        }),
        ct_dir::REPLY => Some(Rewrite {
            dst: None,
            src: Some(to),
        }),
        _ => None,
    }
}

/// The fields of an ICMP error the translation reads and writes, in
/// network byte order as the packet holds them. Scalars, not header
/// copies: this runs inside the kernel programs' 512-byte stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub outer_saddr_be: u32,
    pub outer_daddr_be: u32,
    pub outer_csum_be: u16,
    pub icmp_csum_be: u16,
    /// The quoted IPv4 header's.
    pub inner_saddr_be: u32,
    pub inner_daddr_be: u32,
    pub inner_csum_be: u16,
    /// The quoted L4 ports.
    pub sport_be: u16,
    pub dport_be: u16,
    /// The quoted L4 checksum when it is to be kept right: UDP's (inside
    /// the 8 quoted bytes) unless 0 ("no checksum"), TCP's when the quote
    /// holds it; None otherwise.
    pub l4_csum_be: Option<u16>,
}

/// Rewrites `f` for `rw`: the outer header as a packet travelling the same
/// way, the quote as the packet its receiver sent, every checksum kept
/// right.
#[inline(always)]
pub fn translate(f: &mut Fields, rw: &Rewrite) {
    let old = *f;
    if let Some(dst) = rw.dst {
        f.outer_daddr_be = dst.addr_be;
        f.inner_saddr_be = dst.addr_be;
        f.sport_be = dst.port_be;
    }
    if let Some(src) = rw.src {
        f.outer_saddr_be = src.addr_be;
        f.inner_daddr_be = src.addr_be;
        f.dport_be = src.port_be;
    }
    // Each IPv4 header checksum moves by the change of its addresses.
    let outer = addr(old.outer_saddr_be) + addr(old.outer_daddr_be);
    f.outer_csum_be = adjust(
        old.outer_csum_be,
        outer,
        addr(f.outer_saddr_be) + addr(f.outer_daddr_be),
    );
    let inner_old = addr(old.inner_saddr_be) + addr(old.inner_daddr_be);
    let inner_new = addr(f.inner_saddr_be) + addr(f.inner_daddr_be);
    f.inner_csum_be = adjust(old.inner_csum_be, inner_old, inner_new);
    // The quoted L4 checksum covers the quoted addresses (pseudo-header)
    // and ports; a computed 0 is sent as 0xffff (0 is UDP's "none").
    let ports_old = word(old.sport_be) + word(old.dport_be);
    let ports_new = word(f.sport_be) + word(f.dport_be);
    f.l4_csum_be =
        old.l4_csum_be.map(
            |c| match adjust(c, inner_old + ports_old, inner_new + ports_new) {
                0 => 0xffff,
                c => c,
            },
        );
    // The ICMP checksum covers the whole quote: addresses, the quoted
    // IPv4 checksum, ports and the quoted L4 checksum changed.
    let quote_old = inner_old + word(old.inner_csum_be) + ports_old + l4_word(old.l4_csum_be);
    let quote_new = inner_new + word(f.inner_csum_be) + ports_new + l4_word(f.l4_csum_be);
    f.icmp_csum_be = adjust(old.icmp_csum_be, quote_old, quote_new);
}

/// The sum of the two 16-bit words of an address in network byte order.
#[inline(always)]
fn addr(addr_be: u32) -> u32 {
    let b = addr_be.to_ne_bytes();
    u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
}

/// A 16-bit field in network byte order as a word of the sum.
#[inline(always)]
fn word(v_be: u16) -> u32 {
    u32::from(u16::from_be(v_be))
}

#[inline(always)]
fn l4_word(csum_be: Option<u16>) -> u32 {
    csum_be.map_or(0, word)
}

/// The checksum field `csum_be` after the words it covers changed from
/// those summing to `old` to those summing to `new`, RFC 1624 eqn. 3:
/// HC' = ~(~HC + ~m + m'). ~(sum of words) is the sum of the words'
/// complements in one's complement arithmetic, so sums can be folded first.
#[inline(always)]
fn adjust(csum_be: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!u16::from_be(csum_be)) + u32::from(!fold(old)) + u32::from(fold(new));
    (!fold(sum)).to_be()
}

/// A word sum with the carries folded into 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::proto::{ICMP, TCP, UDP};

    /// The Internet checksum of `bytes` computed from scratch.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        !fold(sum)
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&tot_len.to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6] = 0x40;
        h[8] = 63;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h);
        put16(&mut h, 10, c);
        h
    }

    /// A full L4 segment (header + payload) with its checksum.
    fn segment(proto: u8, src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&src.port_be.to_ne_bytes());
        l4.extend_from_slice(&dst.port_be.to_ne_bytes());
        let csum_at = if proto == TCP {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xfa, 0xf0, 0, 0, 0, 0]);
            16
        } else {
            let len = (8 + payload.len()) as u16;
            l4.extend_from_slice(&len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            6
        };
        l4.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.addr_be.to_ne_bytes());
        pseudo.extend_from_slice(&dst.addr_be.to_ne_bytes());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = checksum(&pseudo);
        put16(&mut l4, csum_at, c);
        l4
    }

    /// The whole ICMP error (IPv4 + ICMP + quote) for a quoted packet.
    fn error(from: [u8; 4], quoted: &[u8], quote_len: usize) -> Vec<u8> {
        let quote = &quoted[..quote_len.min(quoted.len())];
        let mut icmp = std::vec![3, 4, 0, 0, 0, 0, 0x05, 0x14];
        icmp.extend_from_slice(quote);
        let c = checksum(&icmp);
        put16(&mut icmp, 2, c);
        let mut to = [0u8; 4];
        to.copy_from_slice(&quoted[12..16]);
        let mut pkt = ipv4(ICMP, from, to, (20 + icmp.len()) as u16).to_vec();
        pkt.extend_from_slice(&icmp);
        pkt
    }

    fn u32_at(pkt: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(pkt[at..at + 4].try_into().unwrap())
    }

    fn u16_at(pkt: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([pkt[at], pkt[at + 1]])
    }

    /// The fields of an error without IP options (as the kernel side
    /// reads them).
    fn headers(pkt: &[u8]) -> Fields {
        let l4_csum_be = match pkt[37] {
            UDP => Some(u16_at(pkt, 54)).filter(|c| *c != 0),
            TCP if pkt.len() >= 66 => Some(u16_at(pkt, 64)),
            _ => None,
        };
        Fields {
            outer_saddr_be: u32_at(pkt, 12),
            outer_daddr_be: u32_at(pkt, 16),
            outer_csum_be: u16_at(pkt, 10),
            icmp_csum_be: u16_at(pkt, 22),
            inner_saddr_be: u32_at(pkt, 40),
            inner_daddr_be: u32_at(pkt, 44),
            inner_csum_be: u16_at(pkt, 38),
            sport_be: u16_at(pkt, 48),
            dport_be: u16_at(pkt, 50),
            l4_csum_be,
        }
    }

    fn write_back(pkt: &mut [u8], f: &Fields) {
        pkt[12..16].copy_from_slice(&f.outer_saddr_be.to_ne_bytes());
        pkt[16..20].copy_from_slice(&f.outer_daddr_be.to_ne_bytes());
        pkt[10..12].copy_from_slice(&f.outer_csum_be.to_ne_bytes());
        pkt[22..24].copy_from_slice(&f.icmp_csum_be.to_ne_bytes());
        pkt[40..44].copy_from_slice(&f.inner_saddr_be.to_ne_bytes());
        pkt[44..48].copy_from_slice(&f.inner_daddr_be.to_ne_bytes());
        pkt[38..40].copy_from_slice(&f.inner_csum_be.to_ne_bytes());
        pkt[48..50].copy_from_slice(&f.sport_be.to_ne_bytes());
        pkt[50..52].copy_from_slice(&f.dport_be.to_ne_bytes());
        match (pkt[37], f.l4_csum_be) {
            (UDP, Some(c)) => pkt[54..56].copy_from_slice(&c.to_ne_bytes()),
            (TCP, Some(c)) => pkt[64..66].copy_from_slice(&c.to_ne_bytes()),
            _ => {}
        }
    }

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    const CLIENT: Endpoint = ep([198, 51, 100, 7], 40000);
    const FRONTEND: Endpoint = ep([192, 168, 50, 13], 30080);
    const SNAT: Endpoint = ep([10, 244, 3, 0], 40000);
    const BACKEND: Endpoint = ep([10, 244, 1, 2], 8080);
    const ROUTER: [u8; 4] = [10, 244, 1, 0];

    const fn ep(addr: [u8; 4], port: u16) -> Endpoint {
        Endpoint {
            addr_be: u32::from_ne_bytes(addr),
            port_be: port.to_be(),
        }
    }

    /// A packet as it left this node towards the backend, quoted `len`
    /// bytes deep in the error a router sends back.
    fn forwarded(proto: u8, len: usize) -> Vec<u8> {
        let l4 = segment(proto, SNAT, BACKEND, &[0xa5; 1400]);
        let mut quoted = ipv4(
            proto,
            SNAT.addr_be.to_ne_bytes(),
            BACKEND.addr_be.to_ne_bytes(),
            (20 + l4.len()) as u16,
        )
        .to_vec();
        quoted.extend_from_slice(&l4);
        error(ROUTER, &quoted, len)
    }

    /// What the client sent before translation, as the error must quote.
    fn as_the_client_sent(proto: u8) -> Vec<u8> {
        let l4 = segment(proto, CLIENT, FRONTEND, &[0xa5; 1400]);
        let mut quoted = ipv4(
            proto,
            CLIENT.addr_be.to_ne_bytes(),
            FRONTEND.addr_be.to_ne_bytes(),
            (20 + l4.len()) as u16,
        )
        .to_vec();
        quoted.extend_from_slice(&l4);
        quoted
    }

    /// The reply direction of a DNAT+SNAT flow: back to the client, from
    /// the frontend.
    fn to_client() -> Rewrite {
        Rewrite {
            dst: Some(CLIENT),
            src: Some(FRONTEND),
        }
    }

    fn assert_checksums(pkt: &[u8]) {
        assert_eq!(checksum(&pkt[..20]), 0, "outer IPv4 checksum");
        assert_eq!(checksum(&pkt[20..]), 0, "ICMP checksum");
        assert_eq!(checksum(&pkt[28..48]), 0, "quoted IPv4 checksum");
    }

    #[test]
    fn an_error_about_a_forwarded_packet_reads_as_one_about_the_clients_packet() {
        for proto in [TCP, UDP] {
            // 8 quoted L4 bytes (RFC 792), a full header, and Linux's 576.
            for len in [28, 48, 576 - 28] {
                let mut pkt = forwarded(proto, len);
                let mut h = headers(&pkt);
                translate(&mut h, &to_client());
                write_back(&mut pkt, &h);
                assert_eq!(
                    &pkt[12..16],
                    &FRONTEND.addr_be.to_ne_bytes(),
                    "from the frontend"
                );
                assert_eq!(&pkt[16..20], &CLIENT.addr_be.to_ne_bytes(), "to the client");
                assert_checksums(&pkt);
                let want = as_the_client_sent(proto);
                let quoted = &pkt[28..];
                // Byte for byte what the client sent, L4 checksum included
                // wherever the quote holds it.
                assert_eq!(quoted, &want[..quoted.len()], "{proto} quote of {len}");
            }
        }
    }

    #[test]
    fn a_zero_udp_checksum_stays_zero() {
        let mut pkt = forwarded(UDP, 28);
        // The datagram was sent without a checksum.
        pkt[54] = 0;
        pkt[55] = 0;
        let c = checksum(&{
            let mut icmp = pkt[20..].to_vec();
            icmp[2] = 0;
            icmp[3] = 0;
            icmp
        });
        put16(&mut pkt, 22, c);
        let mut h = headers(&pkt);
        translate(&mut h, &to_client());
        write_back(&mut pkt, &h);
        assert_eq!(&pkt[54..56], &[0, 0]);
        assert_checksums(&pkt);
    }

    #[test]
    fn an_error_about_a_reply_reads_as_one_about_the_backends_reply() {
        // The reply left as frontend → client; a router on the client's
        // side reports it to the frontend. Translated like a packet from
        // the client: to the backend, from the SNAT address.
        let l4 = segment(TCP, FRONTEND, CLIENT, &[1; 1000]);
        let mut quoted = ipv4(
            TCP,
            FRONTEND.addr_be.to_ne_bytes(),
            CLIENT.addr_be.to_ne_bytes(),
            (20 + l4.len()) as u16,
        )
        .to_vec();
        quoted.extend_from_slice(&l4);
        let mut pkt = error([203, 0, 113, 1], &quoted, 28);
        let mut h = headers(&pkt);
        let rw = Rewrite {
            dst: Some(BACKEND),
            src: Some(SNAT),
        };
        translate(&mut h, &rw);
        write_back(&mut pkt, &h);
        assert_eq!(&pkt[12..16], &SNAT.addr_be.to_ne_bytes());
        assert_eq!(&pkt[16..20], &BACKEND.addr_be.to_ne_bytes());
        assert_eq!(
            &pkt[40..44],
            &BACKEND.addr_be.to_ne_bytes(),
            "quoted source"
        );
        assert_eq!(
            &pkt[44..48],
            &SNAT.addr_be.to_ne_bytes(),
            "quoted destination"
        );
        assert_eq!(&pkt[48..52], &[0x1f, 0x90, 0x9c, 0x40], "quoted ports");
        assert_checksums(&pkt);
    }

    #[test]
    fn a_source_only_rewrite_keeps_the_outer_destination() {
        // Locally generated (e.g. by a local backend) about client →
        // backend: only the source becomes the frontend.
        let l4 = segment(UDP, CLIENT, BACKEND, b"query");
        let mut quoted = ipv4(
            UDP,
            CLIENT.addr_be.to_ne_bytes(),
            BACKEND.addr_be.to_ne_bytes(),
            (20 + l4.len()) as u16,
        )
        .to_vec();
        quoted.extend_from_slice(&l4);
        let mut pkt = error(BACKEND.addr_be.to_ne_bytes(), &quoted, quoted.len());
        let mut h = headers(&pkt);
        let rw = Rewrite {
            dst: None,
            src: Some(FRONTEND),
        };
        translate(&mut h, &rw);
        write_back(&mut pkt, &h);
        assert_eq!(&pkt[12..16], &FRONTEND.addr_be.to_ne_bytes());
        assert_eq!(&pkt[16..20], &CLIENT.addr_be.to_ne_bytes());
        assert_checksums(&pkt);
        // The whole datagram is quoted: its UDP checksum verifies too.
        let l4 = segment(UDP, CLIENT, FRONTEND, b"query");
        assert_eq!(&pkt[48..], &l4[..], "quoted datagram as the client sent it");
    }

    #[test]
    fn random_tuples_keep_every_checksum_right_whatever_the_carries() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let e = |r: u64| ep((r as u32).to_be_bytes(), (r >> 32) as u16);
            let (from, to, new_src, new_dst) = (e(next()), e(next()), e(next()), e(next()));
            let proto = if next() & 1 == 0 { TCP } else { UDP };
            let payload: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let l4 = segment(proto, from, to, &payload);
            let mut quoted = ipv4(
                proto,
                from.addr_be.to_ne_bytes(),
                to.addr_be.to_ne_bytes(),
                (20 + l4.len()) as u16,
            )
            .to_vec();
            quoted.extend_from_slice(&l4);
            let mut pkt = error(e(next()).addr_be.to_ne_bytes(), &quoted, quoted.len());
            let mut h = headers(&pkt);
            let rw = Rewrite {
                dst: (next() & 1 == 0).then_some(new_dst),
                src: (next() & 1 == 0).then_some(new_src),
            };
            translate(&mut h, &rw);
            write_back(&mut pkt, &h);
            assert_checksums(&pkt);
            // The whole segment is quoted: its own checksum verifies too
            // (a UDP checksum of 0xffff stands for a computed 0).
            let mut pseudo = pkt[40..48].to_vec();
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&pkt[48..]);
            assert_eq!(checksum(&pseudo), 0, "quoted {proto} checksum, {rw:?}");
        }
    }

    fn entry(flags: u8, to: Endpoint, nat: Endpoint) -> CtValue {
        CtValue {
            addr_be: to.addr_be,
            port_be: to.port_be,
            flags,
            tcp_state: 0,
            nat_addr_be: nat.addr_be,
            nat_port_be: nat.port_be,
            rev_nat_id: 1,
            backend_id: 1,
            last_seen_s: 0,
        }
    }

    #[test]
    fn each_direction_rewrites_what_its_packets_get() {
        let redirect = ct_flags::REDIRECT | ct_flags::SNAT;
        let fwd = entry(redirect, BACKEND, SNAT);
        assert_eq!(
            rewrite_for(ct_dir::FORWARD, &fwd),
            Some(Rewrite {
                dst: Some(BACKEND),
                src: Some(SNAT)
            })
        );
        let local = entry(0, BACKEND, ep([0; 4], 0));
        assert_eq!(
            rewrite_for(ct_dir::FORWARD, &local),
            Some(Rewrite {
                dst: Some(BACKEND),
                src: None
            })
        );
        let back = entry(ct_flags::REDIRECT, CLIENT, FRONTEND);
        assert_eq!(rewrite_for(ct_dir::REPLY_SNAT, &back), Some(to_client()));
        // A REPLY_SNAT entry of an earlier version (no REDIRECT) left the
        // source to tc_egress: not translated in one step.
        assert_eq!(
            rewrite_for(ct_dir::REPLY_SNAT, &entry(0, CLIENT, FRONTEND)),
            None
        );
        let reply = entry(0, FRONTEND, ep([0; 4], 0));
        assert_eq!(
            rewrite_for(ct_dir::REPLY, &reply),
            Some(Rewrite {
                dst: None,
                src: Some(FRONTEND)
            })
        );
        assert_eq!(rewrite_for(ct_dir::FORWARD_SNAT, &reply), None);
        let legacy = entry(ct_flags::SNAT, BACKEND, ep([0; 4], 0));
        assert_eq!(rewrite_for(ct_dir::FORWARD, &legacy), None);
    }

    #[test]
    fn errors_are_the_unreachable_time_exceeded_and_parameter_problem_types() {
        assert!(is_error(3) && is_error(11) && is_error(12));
        assert!(!is_error(0) && !is_error(8) && !is_error(5) && !is_error(4));
    }
}
