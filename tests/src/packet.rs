//! Hand-built Ethernet + IPv4 + TCP/UDP packets with correct checksums, and
//! the inverse: reading fields back and verifying checksums from scratch,
//! for the program-test tier (BPF_PROG_TEST_RUN).
use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What to build. Defaults: TCP SYN, no IP options, no payload, not a
/// fragment, valid checksums.
#[derive(Debug, Clone)]
pub struct Spec {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
    pub tcp_flags: u8,
    /// IP options (padded by the caller to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// The 16-bit flags + fragment offset field.
    pub frag: u16,
    /// UDP only: send checksum 0 ("none").
    pub udp_zero_csum: bool,
}

impl Spec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Spec {
            src,
            dst,
            proto: TCP,
            tcp_flags: flags,
            ip_options: Vec::new(),
            payload: Vec::new(),
            frag: 0x4000, // DF
            udp_zero_csum: false,
        }
    }
    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Spec {
            proto: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, dst, 0)
        }
    }
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.proto {
            TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.src.1.to_be_bytes());
                h[2..4].copy_from_slice(&self.dst.1.to_be_bytes());
                h[4..8].copy_from_slice(&0x1000_0001u32.to_be_bytes()); // seq
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
                h
            }
            UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.src.1.to_be_bytes());
                h[2..4].copy_from_slice(&self.dst.1.to_be_bytes());
                let len = (8 + self.payload.len()) as u16;
                h[4..6].copy_from_slice(&len.to_be_bytes());
                h
            }
            _ => vec![8, 0, 0, 0, 0, 1, 0, 1], // ICMP echo request
        };
        l4.extend_from_slice(&self.payload);
        let ihl = 20 + self.ip_options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.0.octets());
        ip[16..20].copy_from_slice(&self.dst.0.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        match self.proto {
            TCP => {
                let c = l4_checksum(self.src.0, self.dst.0, TCP, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            UDP if !self.udp_zero_csum => {
                let mut c = l4_checksum(self.src.0, self.dst.0, UDP, &l4);
                if c == 0 {
                    c = 0xffff;
                }
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            UDP => {}
            _ => {
                let c = checksum(&[&l4]);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        let mut pkt = ethernet(0x0800);
        pkt.extend_from_slice(&ip);
        pkt.extend_from_slice(&l4);
        pkt
    }
}

/// An ICMP error from `src` to `dst` (Ethernet + IPv4 + ICMP) quoting
/// `quote` (the offending packet from its IPv4 header on, as many bytes as
/// the sender quotes), checksums computed from scratch. `rest` is the
/// ICMP header's second word (the next-hop MTU of "fragmentation needed").
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (icmp_type, code): (u8, u8),
    rest: u32,
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ICMP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pkt = ethernet(0x0800);
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(&icmp);
    pkt
}

/// `pkt`'s IPv4 header from its TTL on as a router forwarding it `hops`
/// times leaves it: TTL lowered, header checksum recomputed.
pub fn after_hops(pkt: &[u8], hops: u8) -> Vec<u8> {
    let mut p = pkt.to_vec();
    let ip = ETH_HLEN;
    let ihl = ((p[ip] & 0x0f) as usize) * 4;
    p[ip + 8] -= hops;
    p[ip + 10..ip + 12].fill(0);
    let c = checksum(&[&p[ip..ip + ihl]]);
    p[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    p
}

/// Verifies the outer IPv4 and the ICMP checksum of an ICMP message
/// (from scratch).
pub fn verify_icmp_checksums(pkt: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(pkt.len() >= ETH_HLEN + 28, "too short for ICMP");
    let ip = &pkt[ETH_HLEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    anyhow::ensure!(ip[9] == ICMP, "not ICMP");
    anyhow::ensure!(
        checksum(&[&ip[..ihl]]) == 0,
        "IPv4 header checksum is wrong"
    );
    anyhow::ensure!(
        checksum(&[&ip[ihl..tot_len]]) == 0,
        "ICMP checksum is wrong"
    );
    Ok(())
}

/// An Ethernet header with fixed test MACs and the given ethertype.
pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut h = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    h.extend_from_slice(&ethertype.to_be_bytes());
    h
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum with the IPv4 pseudo-header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    checksum(&[&pseudo, l4])
}

/// The fields of a parsed IPv4 TCP/UDP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
    pub l4_off: usize,
    /// The L4 checksum field as carried.
    pub l4_csum: u16,
}

/// Reads a packet built by [`Spec::build`] (or rewritten from one).
pub fn view(pkt: &[u8]) -> anyhow::Result<View> {
    anyhow::ensure!(
        pkt.len() >= ETH_HLEN + 20,
        "packet too short: {}",
        pkt.len()
    );
    let ip = &pkt[ETH_HLEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let l4_off = ETH_HLEN + ihl;
    anyhow::ensure!(pkt.len() >= l4_off + 8, "no L4 header");
    let l4 = &pkt[l4_off..];
    let proto = ip[9];
    let csum_at = if proto == TCP { 16 } else { 6 };
    anyhow::ensure!(l4.len() >= csum_at + 2, "L4 header cut");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Ok(View {
        src: (addr(&ip[12..16]), u16::from_be_bytes([l4[0], l4[1]])),
        dst: (addr(&ip[16..20]), u16::from_be_bytes([l4[2], l4[3]])),
        proto,
        l4_off,
        l4_csum: u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]),
    })
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of `pkt` by
/// recomputing them from scratch (a UDP checksum of 0 means "none" and is
/// accepted).
pub fn verify_checksums(pkt: &[u8]) -> anyhow::Result<()> {
    let v = view(pkt)?;
    let ip = &pkt[ETH_HLEN..v.l4_off];
    anyhow::ensure!(checksum(&[ip]) == 0, "IPv4 header checksum is wrong");
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &pkt[v.l4_off..ETH_HLEN + tot_len];
    if v.proto == UDP && v.l4_csum == 0 {
        return Ok(());
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&v.src.0.octets());
    pseudo.extend_from_slice(&v.dst.0.octets());
    pseudo.extend_from_slice(&[0, v.proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    anyhow::ensure!(
        checksum(&[&pseudo, l4]) == 0,
        "{} checksum is wrong",
        if v.proto == TCP { "TCP" } else { "UDP" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_carry_valid_checksums() {
        let a = (Ipv4Addr::new(192, 0, 2, 1), 1234);
        let b = (Ipv4Addr::new(192, 0, 2, 2), 80);
        for spec in [
            Spec::tcp(a, b, TCP_SYN).payload(b"hello"),
            Spec::udp(a, b).payload(b"odd"),
        ] {
            let p = spec.build();
            verify_checksums(&p).unwrap();
            let mut bad = p.clone();
            *bad.last_mut().unwrap() ^= 0xff;
            assert!(verify_checksums(&bad).is_err());
        }
    }
}
