//! Fuzz tier of the TC programs: random and mutated packets through every
//! TC program (`tc_ingress`, `tc_egress`, `tc_reply`, `tc_reply_l3`) under
//! BPF_PROG_TEST_RUN, with a few Services and live flows in the maps.
//!
//! What must hold for every packet:
//! - the verdict is one the program documents (OK, SHOT, REDIRECT; never
//!   REDIRECT from `tc_egress`);
//! - a foreign packet (no frontend, no tracked flow, in the outer header or
//!   in an ICMP error's quote) comes out byte for byte, with OK;
//! - a packet whose headers are truncated, malformed, a fragment or of
//!   another protocol is never rewritten (it passes as it came, or is
//!   dropped where the program documents that);
//! - a rewrite touches only the address, port, TTL and checksum fields (or
//!   replaces the packet by a refusal), and keeps valid checksums valid.
//!
//! Seeded (`TC_FUZZ_SEED` overrides the seed, `TC_FUZZ_CASES` the count):
//! a failure names the seed and case to replay it.
mod datapath;

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::packet::{self, Spec, ETH_HLEN, ICMP, TCP, TCP_ACK, TCP_SYN, UDP};
use datapath::*;
use proxy_common::svc_flags;

/// Cases per run: about 4 s on a 2-core machine with a debug build.
const CASES: u64 = 500_000;
const PROGRAMS: [&str; 4] = ["tc_ingress", "tc_egress", "tc_reply", "tc_reply_l3"];
/// An externalIP of a Service without endpoints (refused by the program).
const REFUSING_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

/// The maps: a TCP NodePort to a remote and an overlay backend, a UDP
/// NodePort to a local one, a TCP externalIP to a remote one, and a
/// refusing externalIP; then live flows of each kind.
fn programmed() -> Result<(Datapath, Vec<Vec<u8>>)> {
    let mut dp = Datapath::with_node("tcfuzz")?;
    dp.node_addr(OVERLAY_ADDR, OVERLAY_ADDR, 0);
    let ext = svc_flags::EXTERNAL;
    let remote = [
        Be(REMOTE_POD, TARGET_PORT, false),
        Be(OVERLAY_POD, TARGET_PORT, false),
    ];
    dp.service(Ipv4Addr::UNSPECIFIED, NODE_PORT, TCP, ext, &remote);
    dp.service(
        Ipv4Addr::UNSPECIFIED,
        30053,
        UDP,
        ext,
        &[Be(LOCAL_POD, 5353, true)],
    );
    dp.service(
        EXTERNAL_IP,
        80,
        TCP,
        ext,
        &[Be(REMOTE_POD, TARGET_PORT, false)],
    );
    dp.service(REFUSING_IP, 53, UDP, ext | svc_flags::REJECT, &[]);
    dp.service(REFUSING_IP, 80, TCP, ext | svc_flags::REJECT, &[]);
    let seeds = live_flows(&dp)?;
    Ok((dp, seeds))
}

/// Opens flows and returns packets of them in every direction (as each
/// program sees them): the seeds mutations start from.
fn live_flows(dp: &Datapath) -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    for (i, (dst, proto)) in [
        ((NODE, NODE_PORT), TCP),
        ((NODE, 30053), UDP),
        ((EXTERNAL_IP, 80), TCP),
    ]
    .into_iter()
    .enumerate()
    {
        for k in 0..4u16 {
            let src = (CLIENT, 41000 + 10 * i as u16 + k);
            let first = match proto {
                TCP => Spec::tcp(src, dst, TCP_SYN).payload(b"hello").build(),
                _ => Spec::udp(src, dst).payload(b"query").build(),
            };
            let out = dp.run("tc_ingress", &first)?;
            let fwd = packet::view(&out.data)?;
            // The backend's reply as it comes back, and the errors a hop
            // on either side would send about the flow's packets.
            let reply = match proto {
                TCP => Spec::tcp(fwd.dst, fwd.src, TCP_SYN | TCP_ACK)
                    .payload(b"hi")
                    .build(),
                _ => Spec::udp(fwd.dst, fwd.src).payload(b"answer").build(),
            };
            let quote = out.data[ETH_HLEN..].to_vec();
            let back = dp.run("tc_reply", &reply)?.data;
            seeds.push(first.clone());
            seeds.push(reply.clone());
            seeds.push(packet::icmp_error(
                Ipv4Addr::new(10, 0, 0, 2),
                fwd.src.0,
                (3, 4),
                1300,
                &quote[..28],
            ));
            seeds.push(packet::icmp_error(LOCAL_POD, CLIENT, (3, 3), 0, &quote));
            if packet::view(&back).is_ok() {
                let bq = &back[ETH_HLEN..];
                seeds.push(packet::icmp_error(
                    Ipv4Addr::new(198, 51, 100, 1),
                    NODE,
                    (3, 4),
                    1280,
                    &bq[..bq.len().min(48)],
                ));
            }
        }
    }
    seeds.push(
        Spec::udp((CLIENT, 999), (REFUSING_IP, 53))
            .payload(b"q")
            .build(),
    );
    seeds.push(Spec::tcp((CLIENT, 998), (REFUSING_IP, 80), TCP_SYN).build());
    Ok(seeds)
}

/// What the programs' parser makes of a packet (mirrored here from
/// `proxy-ebpf/src/parse.rs` and `icmp.rs`, independently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Not IPv4, or a protocol the programs ignore (ICMP other than
    /// errors included).
    Other,
    /// Lengths that do not add up; never rewritten.
    Malformed,
    /// An IPv4 fragment of TCP or UDP; never rewritten.
    Fragment,
    /// TCP or UDP with complete headers.
    Flow { l4_off: usize, proto: u8 },
    /// An ICMP error; `quote` when its quoted IPv4 header and 8 L4 bytes
    /// are complete (only then may it be rewritten).
    IcmpError {
        l4_off: usize,
        quote: Option<(usize, usize)>,
    },
}

fn be16(p: &[u8], at: usize) -> usize {
    u16::from_be_bytes([p[at], p[at + 1]]) as usize
}

/// The class of an Ethernet frame.
fn classify(p: &[u8]) -> Class {
    if p.len() < ETH_HLEN || be16(p, 12) != 0x0800 {
        return Class::Other;
    }
    let ip = ETH_HLEN;
    if p.len() < ip + 20 || p[ip] >> 4 != 4 {
        return Class::Malformed;
    }
    let ihl = ((p[ip] & 0x0f) as usize) * 4;
    let tot_len = be16(p, ip + 2);
    if ihl < 20 || tot_len < ihl || ip + tot_len > p.len() {
        return Class::Malformed;
    }
    let proto = p[ip + 9];
    let fragment = be16(p, ip + 6) & 0x3fff != 0;
    let (l4_off, l4_len) = (ip + ihl, tot_len - ihl);
    match proto {
        TCP | UDP if fragment => Class::Fragment,
        TCP if p.len() < l4_off + 14 => Class::Malformed,
        TCP => {
            let doff = ((p[l4_off + 12] >> 4) as usize) * 4;
            if doff < 20 || l4_len < doff {
                Class::Malformed
            } else {
                Class::Flow { l4_off, proto }
            }
        }
        UDP if l4_len < 8 => Class::Malformed,
        UDP => Class::Flow { l4_off, proto },
        ICMP if fragment || p.len() <= l4_off || ![3, 11, 12].contains(&p[l4_off]) => Class::Other,
        ICMP if l4_len < 8 => Class::Malformed,
        ICMP => Class::IcmpError {
            l4_off,
            quote: quote_of(p, l4_off, l4_off + l4_len),
        },
        _ => Class::Other,
    }
}

/// The quoted IPv4 header's offset and its L4 offset, when both are
/// complete (the L4 8 bytes inside the ICMP message).
fn quote_of(p: &[u8], icmp_off: usize, icmp_end: usize) -> Option<(usize, usize)> {
    let q = icmp_off + 8;
    if p.len() < q + 20 || p[q] >> 4 != 4 {
        return None;
    }
    let ihl = ((p[q] & 0x0f) as usize) * 4;
    let ql4 = q + ihl;
    (ihl >= 20 && ql4 + 8 <= icmp_end && ql4 + 8 <= p.len()).then_some((q, ql4))
}

/// The byte offsets a translation may change in a packet of `class`.
fn may_change(class: Class, p: &[u8], at: usize) -> bool {
    let ip = ETH_HLEN;
    let outer = at == ip + 8 || (ip + 10..ip + 20).contains(&at);
    match class {
        Class::Flow { l4_off, proto } => {
            let csum = l4_off + if proto == TCP { 16 } else { 6 };
            outer || (l4_off..l4_off + 4).contains(&at) || (csum..csum + 2).contains(&at)
        }
        Class::IcmpError {
            l4_off,
            quote: Some((q, ql4)),
        } => {
            let tcp = p[q + 9] == TCP;
            outer
                || (l4_off + 2..l4_off + 4).contains(&at)
                || (q + 10..q + 20).contains(&at)
                || (ql4..ql4 + 4).contains(&at)
                || (!tcp && (ql4 + 6..ql4 + 8).contains(&at))
                || (tcp && (ql4 + 16..ql4 + 18).contains(&at))
        }
        _ => false,
    }
}

/// Whether the checksums a packet of `class` carries verify (from scratch):
/// the IPv4 header's and the TCP/UDP or ICMP one.
fn checksums_ok(class: Class, p: &[u8]) -> bool {
    match class {
        Class::Flow { .. } => packet::verify_checksums(p).is_ok(),
        Class::IcmpError { .. } => packet::verify_icmp_checksums(p).is_ok(),
        _ => false,
    }
}

/// Asserts what must hold for one run of `program` on `input` (an
/// Ethernet frame; `tc_reply_l3` got it without its Ethernet header).
fn check(program: &str, input: &[u8], verdict: u32, output: &[u8], foreign: bool) -> Result<()> {
    let allowed: &[u32] = match program {
        "tc_egress" => &[TC_ACT_OK, TC_ACT_SHOT],
        _ => &[TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT],
    };
    ensure!(allowed.contains(&verdict), "verdict {verdict}");
    let l3 = program == "tc_reply_l3";
    // The output as an Ethernet frame: tc_reply_l3 pushes a header only
    // onto what it redirects.
    let output: Vec<u8> = match (l3, verdict) {
        (true, TC_ACT_REDIRECT) => output.to_vec(),
        (true, _) => [&input[..ETH_HLEN], output].concat(),
        (false, _) => output.to_vec(),
    };
    if foreign {
        ensure!(
            verdict == TC_ACT_OK && output == input,
            "a foreign packet was touched"
        );
        return Ok(());
    }
    if verdict == TC_ACT_SHOT {
        return Ok(());
    }
    let class = classify(input);
    let redirected_l3 = l3 && verdict == TC_ACT_REDIRECT;
    if output[ETH_HLEN..] == input[ETH_HLEN..] && !redirected_l3 {
        return Ok(());
    }
    let complete = matches!(
        class,
        Class::Flow { .. } | Class::IcmpError { quote: Some(_), .. }
    );
    ensure!(complete, "{class:?} rewritten");
    // An answer (refusal, "fragmentation needed") goes back where the
    // packet came from: MACs swapped. Translations leave them alone (and
    // tc_reply_l3, which pushes a header, never answers).
    if output.len() != input.len() || (!l3 && output[..12] != input[..12]) {
        return check_answer(class, verdict, &output);
    }
    for (at, (a, b)) in input.iter().zip(&output).enumerate().skip(ETH_HLEN) {
        ensure!(
            a == b || may_change(class, input, at),
            "{class:?}: byte {at} changed"
        );
    }
    if checksums_ok(class, input) {
        ensure!(checksums_ok(class, &output), "{class:?}: checksums broken");
    }
    // The quoted IPv4 header's own checksum too.
    if let Class::IcmpError {
        quote: Some((q, ql4)),
        ..
    } = class
    {
        let sum = |p: &[u8]| packet::checksum(&[&p[q..ql4]]);
        ensure!(
            sum(input) != 0 || sum(&output) == 0,
            "quoted IPv4 checksum broken"
        );
    }
    Ok(())
}

/// A packet replaced by its answer (a refusal's TCP RST or ICMP port
/// unreachable, or "fragmentation needed"): only for complete TCP/UDP
/// packets, sent back, with valid checksums.
fn check_answer(class: Class, verdict: u32, output: &[u8]) -> Result<()> {
    ensure!(matches!(class, Class::Flow { .. }), "{class:?} answered");
    ensure!(verdict == TC_ACT_REDIRECT, "an answer must be sent back");
    match classify(output) {
        c @ Class::Flow { proto: TCP, .. } => {
            ensure!(checksums_ok(c, output), "RST checksums");
        }
        c @ Class::IcmpError { .. } => {
            ensure!(checksums_ok(c, output), "ICMP answer checksums");
        }
        c => bail!("the answer is {c:?}"),
    }
    Ok(())
}

/// An address no frontend, backend, node or client of the maps uses.
fn foreign_addr(rng: &mut fastrand::Rng) -> Ipv4Addr {
    Ipv4Addr::new(172, rng.u8(16..32), rng.u8(..), rng.u8(1..255))
}

/// A well-formed packet between foreign addresses: TCP, UDP, an ICMP echo
/// or an ICMP error quoting such a packet; sometimes with IP options.
fn foreign(rng: &mut fastrand::Rng) -> Vec<u8> {
    let (src, dst) = (foreign_addr(rng), foreign_addr(rng));
    let mut payload = vec![0u8; rng.usize(..64)];
    rng.fill(&mut payload);
    let mut spec = match rng.u8(..4) {
        0 => Spec::tcp((src, rng.u16(..)), (dst, rng.u16(..)), rng.u8(..)),
        1 => Spec::udp((src, rng.u16(..)), (dst, rng.u16(..))),
        2 => {
            let mut s = Spec::tcp((src, 0), (dst, 0), 0);
            s.proto = ICMP;
            s
        }
        _ => {
            let quoted = Spec::udp((dst, rng.u16(..)), (foreign_addr(rng), rng.u16(..)))
                .payload(&payload)
                .build();
            let len = rng.usize(28..=quoted.len() - ETH_HLEN);
            let types = [(3, 4), (3, 3), (11, 0), (12, 0)];
            let t = types[rng.usize(..types.len())];
            return packet::icmp_error(src, dst, t, rng.u32(..), &quoted[ETH_HLEN..ETH_HLEN + len]);
        }
    }
    .payload(&payload);
    if rng.u8(..4) == 0 {
        spec.ip_options = vec![1; 4 * rng.usize(1..=10)];
    }
    spec.build()
}

/// Recomputes the IPv4 header checksum and the TCP/UDP or ICMP checksum
/// of a packet where its lengths allow, so mutated packets also reach the
/// paths behind checksum-sensitive code with valid checksums.
fn fix_checksums(p: &mut [u8]) {
    let ip = ETH_HLEN;
    if p.len() < ip + 20 {
        return;
    }
    let ihl = ((p[ip] & 0x0f) as usize) * 4;
    let tot_len = be16(p, ip + 2);
    if ihl < 20 || ip + ihl > p.len() {
        return;
    }
    p[ip + 10..ip + 12].fill(0);
    let c = packet::checksum(&[&p[ip..ip + ihl]]);
    p[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    if tot_len < ihl || ip + tot_len > p.len() {
        return;
    }
    let (l4, end) = (ip + ihl, ip + tot_len);
    let (src, dst) = (addr(p, ip + 12), addr(p, ip + 16));
    let csum_at = match p[ip + 9] {
        TCP => l4 + 16,
        UDP => l4 + 6,
        ICMP => l4 + 2,
        _ => return,
    };
    if csum_at + 2 > end {
        return;
    }
    p[csum_at..csum_at + 2].fill(0);
    let c = match p[ip + 9] {
        ICMP => packet::checksum(&[&p[l4..end]]),
        proto => packet::l4_checksum(src, dst, proto, &p[l4..end]),
    };
    p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

fn addr(p: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3])
}

/// One to three mutations of `p`: truncation, IHL, total length, fragment
/// field, protocol, TCP data offset, the quoted header's IHL and
/// protocol, random bytes; half the time with checksums made valid again.
fn mutate(rng: &mut fastrand::Rng, mut p: Vec<u8>) -> Vec<u8> {
    let ip = ETH_HLEN;
    for _ in 0..rng.usize(1..=3) {
        let n = p.len();
        match rng.u8(..9) {
            0 => p.truncate(rng.usize(ip..=n)),
            1 if n > ip => p[ip] = (p[ip] & 0xf0) | rng.u8(..16),
            2 if n > ip + 4 => p[ip + 2..ip + 4].copy_from_slice(&rng.u16(..).to_be_bytes()),
            3 if n > ip + 8 => p[ip + 6..ip + 8].copy_from_slice(&rng.u16(..).to_be_bytes()),
            4 if n > ip + 10 => p[ip + 9] = [TCP, UDP, ICMP, 0, 41, 132, 255][rng.usize(..7)],
            5 if n > ip + 33 => p[ip + 32] = rng.u8(..) & 0xf0,
            // The quote of an ICMP error: its IHL and protocol.
            6 if n > ip + 38 => p[ip + 28] = 0x40 | rng.u8(..16),
            7 if n > ip + 38 => p[ip + 37] = [TCP, UDP, ICMP, 0][rng.usize(..4)],
            _ if n > ip => {
                let at = rng.usize(ip..n);
                p[at] = rng.u8(..);
            }
            _ => {}
        }
    }
    if rng.bool() {
        fix_checksums(&mut p);
    }
    p
}

/// Random bytes behind an IPv4 Ethernet header.
fn random_bytes(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut p = packet::ethernet(0x0800);
    let mut body = vec![0u8; rng.usize(20..200)];
    rng.fill(&mut body);
    if rng.bool() {
        body[0] = 0x45;
    }
    p.extend_from_slice(&body);
    p
}

/// A case: the packet (an Ethernet frame) and whether it is foreign.
fn case(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> (Vec<u8>, bool) {
    match rng.u8(..10) {
        0..=2 => (foreign(rng), true),
        3..=7 => {
            let seed = seeds[rng.usize(..seeds.len())].clone();
            (mutate(rng, seed), false)
        }
        8 => {
            let f = foreign(rng);
            (mutate(rng, f), false)
        }
        _ => (random_bytes(rng), false),
    }
}

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim_start_matches("0x");
            u64::from_str_radix(v, 16).with_context(|| format!("{name}={v} (hex)"))
        }
        Err(_) => Ok(default),
    }
}

#[test]
fn random_and_mutated_packets_get_no_wrong_verdict_and_no_wrong_rewrite() -> Result<()> {
    let seed = env_or("TC_FUZZ_SEED", 0x5eed_1c3b)?;
    let cases = env_or("TC_FUZZ_CASES", CASES)?;
    let (dp, seeds) = programmed()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let (mut rewritten, mut foreign_n, mut refused_by_kernel) = (0u64, 0u64, 0u64);
    let mut icmp_rewritten = 0u64;
    for n in 0..cases {
        let (pkt, is_foreign) = case(&mut rng, &seeds);
        let program = PROGRAMS[rng.usize(..PROGRAMS.len())];
        let input = if program == "tc_reply_l3" {
            &pkt[ETH_HLEN..]
        } else {
            &pkt[..]
        };
        let r = match dp.run(program, input) {
            Ok(r) => r,
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet
            // header and IPv4 ones shorter than an IPv4 header.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && input.len() < ETH_HLEN + 20 => {
                refused_by_kernel += 1;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("case {n}: {program} on {pkt:02x?}")),
        };
        check(program, &pkt, r.retval, &r.data, is_foreign).with_context(|| {
            format!(
                "TC_FUZZ_SEED={seed:x} case {n}: {program} on {pkt:02x?} gave {} {:02x?}",
                r.retval, r.data
            )
        })?;
        foreign_n += u64::from(is_foreign);
        let changed = r.data[..] != input[..];
        rewritten += u64::from(changed);
        icmp_rewritten += u64::from(changed && matches!(classify(&pkt), Class::IcmpError { .. }));
    }
    println!(
        "{cases} cases (seed {seed:#x}) in {:?}: {foreign_n} foreign, {rewritten} rewritten \
         ({icmp_rewritten} ICMP errors), {refused_by_kernel} too short for BPF_PROG_TEST_RUN",
        started.elapsed()
    );
    // Without rewrites the fuzz would prove nothing about them.
    ensure!(rewritten > cases / 100, "only {rewritten} rewrites");
    ensure!(
        icmp_rewritten > cases / 1000,
        "only {icmp_rewritten} ICMP rewrites"
    );
    ensure!(
        refused_by_kernel < cases / 10,
        "{refused_by_kernel} refused by the kernel"
    );
    Ok(())
}
