//! Program tests of the TC datapath: the object the agent ships, loaded
//! against a private bpffs, its `tc_ingress`/`tc_egress` run with
//! BPF_PROG_TEST_RUN on hand-built packets, its maps filled directly.
//!
//! Nothing here sends a packet anywhere: BPF_PROG_TEST_RUN hands the packet
//! to the program and back to us (a redirect is only a verdict). The test
//! thread joins a "node" namespace first, whose routes the programs' FIB
//! lookups see: the node's NIC (NODE, backends on other nodes behind it,
//! host-gw style) and a flannel-style VXLAN overlay (`flannel.1`, its own
//! address, MTU 1450) to a third node's pods.
#[path = "tc_prog/conntrack.rs"]
mod conntrack;
mod datapath;

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::packet::{
    self, verify_checksums, view, Spec, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP,
};
use datapath::*;
use proxy_common::{counters, ct_dir, maps as names, node_flags, svc_flags, CtKey};

/// The IPv4 TTL of a built packet.
fn ttl(pkt: &[u8]) -> u8 {
    pkt[packet::ETH_HLEN + 8]
}

fn nodeport_tcp(dp: &mut Datapath, backends: &[Be]) {
    dp.service(
        Ipv4Addr::UNSPECIFIED,
        NODE_PORT,
        TCP,
        svc_flags::EXTERNAL,
        backends,
    );
}

/// The UDP NodePort the UDP tests use.
const UDP_NODE_PORT: u16 = 30053;

fn nodeport_udp(dp: &mut Datapath, backends: &[Be]) {
    dp.service(
        Ipv4Addr::UNSPECIFIED,
        UDP_NODE_PORT,
        UDP,
        svc_flags::EXTERNAL,
        backends,
    );
}

/// Asserts that `after` differs from `before` only in the bytes a rewrite
/// may touch: IP addresses, TTL, IP checksum, ports and L4 checksum.
fn assert_only_nat_fields_changed(before: &[u8], after: &[u8]) {
    assert_eq!(before.len(), after.len(), "packet length changed");
    let v = view(before).unwrap();
    let csum_at = v.l4_off + if v.proto == TCP { 16 } else { 6 };
    let ip = packet::ETH_HLEN;
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        // The TTL drops by one where the program forwards the packet itself.
        let allowed = i == ip + 8
            || (ip + 10..ip + 12).contains(&i)
            || (ip + 12..ip + 20).contains(&i)
            || (v.l4_off..v.l4_off + 4).contains(&i)
            || (csum_at..csum_at + 2).contains(&i);
        assert!(allowed || a == b, "byte {i} changed ({a:#04x} → {b:#04x})");
    }
}

#[test]
fn nodeport_syn_is_dnated_to_a_local_backend_with_correct_checksums() -> Result<()> {
    let mut dp = Datapath::with_node("tcdnat")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let syn = Spec::tcp((CLIENT, 40000), (NODE, NODE_PORT), TCP_SYN)
        .payload(b"abc")
        .build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(rc, TC_ACT_OK);
    let v = view(&out)?;
    assert_eq!(
        v.dst,
        (LOCAL_POD, TARGET_PORT),
        "destination is the backend"
    );
    assert_eq!(
        v.src,
        (CLIENT, 40000),
        "client address kept for a local backend"
    );
    verify_checksums(&out)?;
    assert_only_nat_fields_changed(&syn, &out);
    // No SNAT for a local backend: egress leaves the forwarded packet alone.
    let (rc, out2) = dp.egress(&out);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out2, out);
    assert_eq!(dp.counter(counters::TC_NEW_FLOW), 1);
    Ok(())
}

#[test]
fn a_remote_backend_is_dnated_and_snated_at_ingress_and_forwarded_by_the_program() -> Result<()> {
    let mut dp = Datapath::with_node("tcsnat")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, 40001), (NODE, NODE_PORT), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    // Redirected to the NIC the route names: never back into the stack,
    // where a node address as source would be dropped as a martian.
    assert_eq!(rc, TC_ACT_REDIRECT);
    let v = view(&out)?;
    assert_eq!(v.src.0, NODE, "source is the node");
    assert!(
        (proxy_common::SNAT_PORT_MIN..=proxy_common::SNAT_PORT_MAX).contains(&v.src.1),
        "a SNAT port from its range, not the client's ephemeral one: {}",
        v.src.1
    );
    assert_eq!(v.dst, (REMOTE_POD, TARGET_PORT));
    assert_eq!(ttl(&out), TTL - 1, "forwarded as a router does");
    verify_checksums(&out)?;
    assert_only_nat_fields_changed(&syn, &out);
    // The egress program of the NIC leaves the translated packet alone.
    assert_eq!(dp.egress(&out), (TC_ACT_OK, out.clone()));
    Ok(())
}

#[test]
fn a_backend_behind_the_overlay_sees_the_overlay_address_of_the_node() -> Result<()> {
    let mut dp = Datapath::with_node("tcovl")?;
    nodeport_tcp(&mut dp, &[Be(OVERLAY_POD, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, 40004), (NODE, NODE_PORT), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let v = view(&out)?;
    assert_eq!(
        v.src.0, OVERLAY_ADDR,
        "the egress device's address, as MASQUERADE picks it"
    );
    assert_eq!(v.dst, (OVERLAY_POD, TARGET_PORT));
    verify_checksums(&out)?;
    // Its reply comes in by the overlay, where tc_reply sits.
    let reply = Spec::tcp(
        (OVERLAY_POD, TARGET_PORT),
        (OVERLAY_ADDR, v.src.1),
        TCP_SYN | TCP_ACK,
    )
    .build();
    let (rc, back) = dp.reply(&reply);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(view(&back)?.src, (NODE, NODE_PORT));
    assert_eq!(view(&back)?.dst, (CLIENT, 40004));
    verify_checksums(&back)?;
    Ok(())
}

#[test]
fn a_packet_too_big_for_the_overlay_gets_fragmentation_needed() -> Result<()> {
    let mut dp = Datapath::with_node("tcpmtu")?;
    nodeport_tcp(&mut dp, &[Be(OVERLAY_POD, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, 40005), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_REDIRECT);
    // A full-size segment of a 1500-byte client link (DF set).
    let big = Spec::tcp((CLIENT, 40005), (NODE, NODE_PORT), TCP_ACK)
        .payload(&[7u8; 1460])
        .build();
    assert!(big.len() - packet::ETH_HLEN > OVERLAY_MTU);
    let (rc, icmp) = dp.ingress(&big);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back out");
    let ip = &icmp[packet::ETH_HLEN..];
    assert_eq!(ip[9], packet::ICMP);
    assert_eq!(
        &ip[12..16],
        &NODE.octets(),
        "from the address the client used"
    );
    assert_eq!(&ip[16..20], &CLIENT.octets());
    assert_eq!((ip[20], ip[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([ip[26], ip[27]]) as usize, OVERLAY_MTU);
    assert_eq!(
        &ip[28..48],
        &big[packet::ETH_HLEN..packet::ETH_HLEN + 20],
        "quotes the packet as the client sent it"
    );
    assert_eq!(dp.counter(counters::TC_FRAG_NEEDED), 1);
    // Without DF the program cannot fragment: dropped, counted.
    let mut spec = Spec::tcp((CLIENT, 40005), (NODE, NODE_PORT), TCP_ACK).payload(&[7u8; 1460]);
    spec.frag = 0;
    assert_eq!(dp.ingress(&spec.build()).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_FRAG_NEEDED), 2);
    Ok(())
}

#[test]
fn a_backend_without_a_route_is_dropped_and_counted() -> Result<()> {
    let mut dp = Datapath::with_node("tcnoroute")?;
    let unrouted = Ipv4Addr::new(192, 0, 2, 1);
    nodeport_tcp(&mut dp, &[Be(unrouted, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, 40006), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_DROP_NO_ROUTE), 1);
    assert_eq!(dp.counter(counters::TC_NEW_FLOW), 0, "no flow is created");
    Ok(())
}

#[test]
fn replies_are_reverse_natted_to_the_nodeport() -> Result<()> {
    let mut dp = Datapath::with_node("tcrnat")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let syn = Spec::tcp((CLIENT, 40002), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_OK);
    let reply = Spec::tcp((LOCAL_POD, TARGET_PORT), (CLIENT, 40002), TCP_SYN | TCP_ACK)
        .payload(b"hello")
        .build();
    // At the backend-facing ingress a local backend's reply is not touched.
    assert_eq!(dp.ingress(&reply), (TC_ACT_OK, reply.clone()));
    let (rc, out) = dp.egress(&reply);
    assert_eq!(rc, TC_ACT_OK);
    let v = view(&out)?;
    assert_eq!(v.src, (NODE, NODE_PORT), "reply comes from the NodePort");
    assert_eq!(v.dst, (CLIENT, 40002));
    verify_checksums(&out)?;
    assert_only_nat_fields_changed(&reply, &out);
    Ok(())
}

/// A SYN from `CLIENT:client_port` to the NodePort forwarded to a backend
/// on another node (DNAT + SNAT), and the backend's SYN-ACK to it.
fn forwarded_syn_and_reply(dp: &mut Datapath, client_port: u16) -> Result<Vec<u8>> {
    nodeport_tcp(dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, client_port), (NODE, NODE_PORT), TCP_SYN).build();
    let (_, out) = dp.ingress(&syn);
    let snat_port = view(&out)?.src.1;
    Ok(Spec::tcp(
        (REMOTE_POD, TARGET_PORT),
        (NODE, snat_port),
        TCP_SYN | TCP_ACK,
    )
    .build())
}

#[test]
fn snated_replies_go_back_to_the_client_in_one_step_on_either_ingress_program() -> Result<()> {
    let mut dp = Datapath::with_node("tcrsnat")?;
    let reply = forwarded_syn_and_reply(&mut dp, 40003)?;
    // On a client-facing device (tc_ingress) or a device only replies
    // come back by (tc_reply): client and NodePort back, forwarded.
    for (program, (rc, back)) in [
        ("tc_ingress", dp.ingress(&reply)),
        ("tc_reply", dp.reply(&reply)),
    ] {
        assert_eq!(rc, TC_ACT_REDIRECT, "{program}");
        let v = view(&back)?;
        assert_eq!(v.src, (NODE, NODE_PORT), "{program}");
        assert_eq!(v.dst, (CLIENT, 40003), "{program}");
        assert_eq!(ttl(&back), TTL - 1);
        verify_checksums(&back)?;
        assert_only_nat_fields_changed(&reply, &back);
    }
    Ok(())
}

/// `pkt` (Ethernet, IPv4, …) inside an IPIP packet from `from` to `to`:
/// Ethernet, outer IPv4 (protocol 4, no options), the original IPv4 packet.
fn ipip(pkt: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let len = (20 + pkt.len() - 14) as u16;
    let mut outer = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, TTL, 4, 0, 0];
    outer[2..4].copy_from_slice(&len.to_be_bytes());
    outer.extend(from.octets());
    outer.extend(to.octets());
    let mut out = pkt[..14].to_vec();
    out.extend(outer);
    out.extend(&pkt[14..]);
    out
}

#[test]
fn snated_replies_over_ipip_are_decapsulated_at_the_nic_and_go_back_to_the_client() -> Result<()> {
    let mut dp = Datapath::with_node("tcipip")?;
    let reply = forwarded_syn_and_reply(&mut dp, 40011)?;
    let (rc, plain) = dp.reply(&reply);
    assert_eq!(rc, TC_ACT_REDIRECT);
    // The same reply as it arrives over flannel's `ipip` backend (or
    // Calico's IPIP): from the backend's node, to this one. Before Linux
    // 5.14 a program on the tunnel device would see these outer headers
    // too, so the NIC's programs take the tunnel's replies off it.
    let encapsulated = ipip(&reply, Ipv4Addr::new(10, 0, 0, 2), NODE);
    for (program, (rc, back)) in [
        ("tc_ingress", dp.ingress(&encapsulated)),
        ("tc_reply", dp.reply(&encapsulated)),
    ] {
        assert_eq!(rc, TC_ACT_REDIRECT, "{program}");
        assert_eq!(back, plain, "{program}: decapsulated and translated");
        verify_checksums(&back)?;
    }
    // IPIP that is no reply of ours is left to the tunnel, byte for byte.
    let other = Spec::tcp((REMOTE_POD, TARGET_PORT), (NODE, 1), TCP_ACK).build();
    let other = ipip(&other, Ipv4Addr::new(10, 0, 0, 2), NODE);
    assert_eq!(dp.ingress(&other), (TC_ACT_OK, other.clone()));
    assert_eq!(dp.reply(&other), (TC_ACT_OK, other.clone()));
    Ok(())
}

#[test]
fn tc_reply_touches_nothing_but_replies_of_forwarded_flows() -> Result<()> {
    let mut dp = Datapath::with_node("tcronly")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    // A new connection to the NodePort arriving by a reply-only device is
    // not served there.
    let syn = Spec::tcp((CLIENT, 40007), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.reply(&syn), (TC_ACT_OK, syn.clone()));
    let other = Spec::udp((REMOTE_POD, 53), (NODE, 40000))
        .payload(b"x")
        .build();
    assert_eq!(dp.reply(&other), (TC_ACT_OK, other.clone()));
    Ok(())
}

#[test]
fn two_clients_with_the_same_port_get_distinct_snat_ports() -> Result<()> {
    let other = Ipv4Addr::new(198, 51, 100, 8);
    let mut dp = Datapath::with_node("tcsport")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let mut snat_ports = Vec::new();
    for client in [CLIENT, other] {
        let syn = Spec::tcp((client, 45000), (NODE, NODE_PORT), TCP_SYN).build();
        let (_, out) = dp.ingress(&syn);
        assert_eq!(view(&out)?.src.0, NODE);
        snat_ports.push(view(&out)?.src.1);
    }
    assert_ne!(snat_ports[0], snat_ports[1], "SNAT tuples must not collide");
    for (client, port) in [(CLIENT, snat_ports[0]), (other, snat_ports[1])] {
        let reply = Spec::tcp((REMOTE_POD, TARGET_PORT), (NODE, port), TCP_ACK).build();
        let (_, back) = dp.ingress(&reply);
        assert_eq!(view(&back)?.dst, (client, 45000));
    }
    Ok(())
}

#[test]
fn a_flow_keeps_its_backend_over_many_packets_and_endpoint_changes() -> Result<()> {
    let mut dp = Datapath::with_node("tcsticky")?;
    let backends: Vec<Be> = (1..=8)
        .map(|i| Be(Ipv4Addr::new(10, 244, 1, i), TARGET_PORT, true))
        .collect();
    nodeport_tcp(&mut dp, &backends);
    let mut chosen = std::collections::BTreeSet::new();
    for flow in 0..40u16 {
        let sport = 41000 + flow;
        let syn = Spec::tcp((CLIENT, sport), (NODE, NODE_PORT), TCP_SYN).build();
        let first = view(&dp.ingress(&syn).1)?.dst;
        chosen.insert(first);
        for _ in 0..25 {
            let ack = Spec::tcp((CLIENT, sport), (NODE, NODE_PORT), TCP_ACK)
                .payload(b"data")
                .build();
            let (rc, out) = dp.ingress(&ack);
            assert_eq!(rc, TC_ACT_OK);
            assert_eq!(view(&out)?.dst, first, "flow {sport} changed backend");
        }
    }
    // 40 flows over 8 backends all on one: probability 8^-39.
    assert!(chosen.len() > 1, "selection is not random: {chosen:?}");
    // The endpoint set changes entirely: the established flow stays.
    let syn = Spec::tcp((CLIENT, 42000), (NODE, NODE_PORT), TCP_SYN).build();
    let first = view(&dp.ingress(&syn).1)?.dst;
    nodeport_tcp(&mut dp, &[Be(Ipv4Addr::new(10, 244, 9, 9), 9999, true)]);
    let ack = Spec::tcp((CLIENT, 42000), (NODE, NODE_PORT), TCP_ACK).build();
    assert_eq!(view(&dp.ingress(&ack).1)?.dst, first);
    // A new flow gets the new backend.
    let syn = Spec::tcp((CLIENT, 42001), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(
        view(&dp.ingress(&syn).1)?.dst,
        (Ipv4Addr::new(10, 244, 9, 9), 9999)
    );
    Ok(())
}

#[test]
fn a_syn_reusing_a_closed_flow_tuple_is_balanced_again() -> Result<()> {
    let mut dp = Datapath::with_node("tcreuse")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let tuple = ((CLIENT, 43000), (NODE, NODE_PORT));
    dp.ingress(&Spec::tcp(tuple.0, tuple.1, TCP_SYN).build());
    dp.ingress(&Spec::tcp(tuple.0, tuple.1, TCP_FIN | TCP_ACK).build());
    let key = CtKey::new(CLIENT, 43000, NODE, NODE_PORT, TCP, ct_dir::FORWARD);
    assert_eq!(
        dp.ct(&key).context("forward entry")?.tcp_state,
        proxy_common::ct_state::CLOSING
    );
    let other = Be(REMOTE_POD, TARGET_PORT, true);
    nodeport_tcp(&mut dp, &[other]);
    let out = dp.ingress(&Spec::tcp(tuple.0, tuple.1, TCP_SYN).build()).1;
    assert_eq!(view(&out)?.dst, (REMOTE_POD, TARGET_PORT));
    assert_eq!(
        dp.ct(&key).context("forward entry")?.tcp_state,
        proxy_common::ct_state::SYN_SENT
    );
    Ok(())
}

#[test]
fn udp_checksums_stay_correct_and_a_zero_checksum_stays_zero() -> Result<()> {
    let mut dp = Datapath::with_node("tcudp")?;
    nodeport_udp(&mut dp, &[Be(REMOTE_POD, 5353, false)]);
    for (sport, zero) in [(50000, false), (50001, true)] {
        let mut spec = Spec::udp((CLIENT, sport), (NODE, 30053)).payload(b"query");
        spec.udp_zero_csum = zero;
        let q = spec.build();
        let (rc, out) = dp.ingress(&q);
        assert_eq!(rc, TC_ACT_REDIRECT);
        let v = view(&out)?;
        assert_eq!(v.dst, (REMOTE_POD, 5353));
        assert_eq!(v.src.0, NODE);
        verify_checksums(&out)?;
        assert_eq!(
            v.l4_csum == 0,
            zero,
            "zero UDP checksum must stay zero, others not become zero"
        );
        let mut rspec = Spec::udp((REMOTE_POD, 5353), (NODE, v.src.1)).payload(b"answer");
        rspec.udp_zero_csum = zero;
        let (rc, back) = dp.ingress(&rspec.build());
        assert_eq!(rc, TC_ACT_REDIRECT);
        let b = view(&back)?;
        assert_eq!(b.src, (NODE, 30053));
        assert_eq!(b.dst, (CLIENT, sport));
        verify_checksums(&back)?;
        assert_eq!(b.l4_csum == 0, zero);
    }
    Ok(())
}

#[test]
fn external_ips_are_translated_and_cluster_ips_are_not() -> Result<()> {
    let mut dp = Datapath::with_node("tcextip")?;
    dp.service(
        EXTERNAL_IP,
        80,
        TCP,
        svc_flags::EXTERNAL,
        &[Be(REMOTE_POD, TARGET_PORT, false)],
    );
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    dp.service(
        cluster_ip,
        80,
        TCP,
        0,
        &[Be(REMOTE_POD, TARGET_PORT, false)],
    );
    let syn = Spec::tcp((CLIENT, 40010), (EXTERNAL_IP, 80), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(view(&out)?.dst, (REMOTE_POD, TARGET_PORT));
    assert_eq!(view(&out)?.src.0, NODE, "SNAT address of the egress device");
    verify_checksums(&out)?;
    let syn = Spec::tcp((CLIENT, 40011), (cluster_ip, 80), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn), (TC_ACT_OK, syn.clone()));
    Ok(())
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() -> Result<()> {
    let lb_ip = Ipv4Addr::new(203, 0, 113, 60);
    let outsider = Ipv4Addr::new(198, 51, 100, 8);
    let mut dp = Datapath::with_node("tcsrcr")?;
    let flags = svc_flags::EXTERNAL | svc_flags::SOURCE_RANGES;
    dp.service(lb_ip, 80, TCP, flags, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let rev = dp.next_rev_nat_id - 1;
    dp.source_range(rev, Ipv4Addr::new(198, 51, 100, 0), 29);
    // Another frontend's range does not count for this one.
    dp.source_range(rev + 1, outsider, 32);
    let syn = Spec::tcp((CLIENT, 40040), (lb_ip, 80), TCP_SYN).build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(
        rc, TC_ACT_REDIRECT,
        "198.51.100.7 is inside 198.51.100.0/29"
    );
    assert_eq!(view(&out)?.dst, (REMOTE_POD, TARGET_PORT));
    let syn = Spec::tcp((outsider, 40041), (lb_ip, 80), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_SHOT, "198.51.100.8 is outside");
    assert_eq!(dp.counter(counters::TC_DROP_SOURCE_RANGE), 1);
    assert_eq!(dp.counter(counters::TC_NEW_FLOW), 1);
    Ok(())
}

#[test]
fn etp_local_keeps_the_client_address() -> Result<()> {
    let mut dp = Datapath::with_node("tcetpl")?;
    dp.service(
        Ipv4Addr::UNSPECIFIED,
        NODE_PORT,
        TCP,
        svc_flags::EXTERNAL | svc_flags::ETP_LOCAL,
        // Not flagged local on purpose: the frontend flag alone must decide.
        &[Be(REMOTE_POD, TARGET_PORT, false)],
    );
    let syn = Spec::tcp((CLIENT, 40020), (NODE, NODE_PORT), TCP_SYN).build();
    let (_, fwd) = dp.ingress(&syn);
    let (_, out) = dp.egress(&fwd);
    assert_eq!(view(&out)?.src, (CLIENT, 40020));
    assert_eq!(view(&out)?.dst, (REMOTE_POD, TARGET_PORT));
    Ok(())
}

#[test]
fn a_local_policy_frontend_without_local_endpoints_drops_and_counts() -> Result<()> {
    // Endpoints exist elsewhere (no REJECT flag): silence, so load
    // balancers go by the health check port.
    let mut dp = Datapath::with_node("tcnoep")?;
    nodeport_tcp(&mut dp, &[]);
    let syn = Spec::tcp((CLIENT, 40030), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_DROP_NO_ENDPOINTS), 1);
    Ok(())
}

#[test]
fn a_node_port_without_any_endpoint_is_left_to_the_stack_to_refuse() -> Result<()> {
    let mut dp = Datapath::with_node("tcreject")?;
    dp.service(
        Ipv4Addr::UNSPECIFIED,
        NODE_PORT,
        TCP,
        svc_flags::EXTERNAL | svc_flags::REJECT,
        &[],
    );
    let syn = Spec::tcp((CLIENT, 40031), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(
        dp.ingress(&syn),
        (TC_ACT_OK, syn.clone()),
        "untouched, for the kernel to RST"
    );
    assert_eq!(dp.counter(counters::TC_REJECT_NO_ENDPOINTS), 1);
    assert_eq!(dp.counter(counters::TC_DROP_NO_ENDPOINTS), 0);
    Ok(())
}

/// An externalIP (not a node address) of a Service without any endpoint.
fn external_ip_without_endpoints(dp: &mut Datapath, port: u16, proto: u8) {
    let flags = svc_flags::EXTERNAL | svc_flags::REJECT;
    dp.service(EXTERNAL_IP, port, proto, flags, &[]);
}

/// The refusal goes back to the hop the packet came from.
fn assert_macs_swapped(request: &[u8], answer: &[u8]) {
    assert_eq!(answer[..6], request[6..12], "destination MAC: the sender");
    assert_eq!(answer[6..12], request[..6], "source MAC: this device");
}

#[test]
fn an_external_ip_without_any_endpoint_answers_a_syn_with_a_rst() -> Result<()> {
    let mut dp = Datapath::with_node("tcrst")?;
    external_ip_without_endpoints(&mut dp, 80, TCP);
    // Payload on a SYN (TCP Fast Open) counts in the acknowledgment.
    let syn = Spec::tcp((CLIENT, 40032), (EXTERNAL_IP, 80), TCP_SYN)
        .payload(b"early")
        .build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back out of the device");
    assert_eq!(out.len(), packet::ETH_HLEN + 40, "IPv4 + TCP, no payload");
    assert_macs_swapped(&syn, &out);
    let v = view(&out)?;
    assert_eq!(
        (v.proto, v.src, v.dst),
        (TCP, (EXTERNAL_IP, 80), (CLIENT, 40032))
    );
    let tcp = &out[v.l4_off..];
    assert_eq!(tcp[13], TCP_RST | TCP_ACK);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    assert_eq!(ack, 0x1000_0001 + 1 + 5, "acknowledges SYN and payload");
    verify_checksums(&out)?;
    assert_eq!(dp.counter(counters::TC_REJECT_NO_ENDPOINTS), 1);
    // A RST is never answered (two refusing hosts would ping-pong).
    let rst = Spec::tcp((CLIENT, 40032), (EXTERNAL_IP, 80), TCP_RST).build();
    assert_eq!(dp.ingress(&rst).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_DROP_NO_ENDPOINTS), 1);
    Ok(())
}

#[test]
fn udp_to_an_external_ip_without_any_endpoint_gets_icmp_port_unreachable() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmp")?;
    external_ip_without_endpoints(&mut dp, 53, UDP);
    let query = Spec::udp((CLIENT, 5353), (EXTERNAL_IP, 53))
        .payload(b"a query longer than what ICMP quotes")
        .build();
    let (rc, out) = dp.ingress(&query);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out.len(), packet::ETH_HLEN + 56);
    assert_macs_swapped(&query, &out);
    let ip = &out[packet::ETH_HLEN..packet::ETH_HLEN + 20];
    assert_eq!(packet::checksum(&[ip]), 0, "IPv4 header checksum");
    assert_eq!(ip[9], packet::ICMP);
    assert_eq!(ip[12..16], EXTERNAL_IP.octets());
    assert_eq!(ip[16..20], CLIENT.octets());
    let icmp = &out[packet::ETH_HLEN + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
    assert_eq!(packet::checksum(&[icmp]), 0, "ICMP checksum");
    let quoted = &query[packet::ETH_HLEN..packet::ETH_HLEN + 28];
    assert_eq!(&icmp[8..], quoted, "quotes the IPv4 header and 8 bytes");
    assert_eq!(dp.counter(counters::TC_REJECT_NO_ENDPOINTS), 1);
    // With IP options the quote would not fit the fixed layout: dropped.
    let mut with_options = Spec::udp((CLIENT, 5353), (EXTERNAL_IP, 53));
    with_options.ip_options = vec![1, 1, 1, 0];
    assert_eq!(dp.ingress(&with_options.build()).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_DROP_NO_ENDPOINTS), 1);
    Ok(())
}

#[test]
fn an_external_ip_with_endpoints_elsewhere_only_is_not_refused() -> Result<()> {
    // Local policy, endpoints on other nodes (no REJECT flag): silence.
    let mut dp = Datapath::with_node("tcextdrop")?;
    let flags = svc_flags::EXTERNAL | svc_flags::ETP_LOCAL;
    dp.service(EXTERNAL_IP, 80, TCP, flags, &[]);
    let syn = Spec::tcp((CLIENT, 40033), (EXTERNAL_IP, 80), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(counters::TC_REJECT_NO_ENDPOINTS), 0);
    Ok(())
}

#[test]
fn client_ip_affinity_keeps_an_external_client_on_one_backend() -> Result<()> {
    let mut dp = Datapath::with_node("tcaff")?;
    let backends: Vec<Be> = (1..=8)
        .map(|i| Be(Ipv4Addr::new(10, 244, 1, i), TARGET_PORT, true))
        .collect();
    dp.service_with_affinity(Ipv4Addr::UNSPECIFIED, NODE_PORT, TCP, 300, &backends);
    let other = Ipv4Addr::new(198, 51, 100, 9);
    let mut seen = std::collections::BTreeMap::new();
    for client in [CLIENT, other] {
        for flow in 0..20u16 {
            let syn = Spec::tcp((client, 42000 + flow), (NODE, NODE_PORT), TCP_SYN).build();
            let dst = view(&dp.ingress(&syn).1)?.dst;
            seen.entry(client)
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(dst);
        }
    }
    for (client, backends) in &seen {
        assert_eq!(backends.len(), 1, "{client} went to {backends:?}");
    }
    assert_eq!(dp.counter(counters::AFFINITY_HIT), 2 * 19);
    Ok(())
}

#[test]
fn foreign_traffic_passes_byte_for_byte() -> Result<()> {
    let mut dp = Datapath::with_node("tcforeign")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let other = Ipv4Addr::new(10, 0, 0, 99);
    let mut arp = packet::ethernet(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let mut ipv6 = packet::ethernet(0x86dd);
    ipv6.extend_from_slice(&[0x60; 60]);
    let mut icmp = Spec::tcp((CLIENT, 0), (NODE, 0), 0);
    icmp.proto = packet::ICMP;
    let packets = vec![
        Spec::tcp((CLIENT, 40040), (NODE, 22), TCP_SYN).build(),
        Spec::tcp((CLIENT, 40040), (other, NODE_PORT), TCP_SYN).build(),
        Spec::udp((CLIENT, 40040), (NODE, NODE_PORT)).build(),
        Spec::tcp((LOCAL_POD, TARGET_PORT), (CLIENT, 40041), TCP_ACK).build(),
        icmp.build(),
        arp,
        ipv6,
    ];
    for p in &packets {
        assert_eq!(dp.ingress(p), (TC_ACT_OK, p.clone()), "ingress {p:02x?}");
        assert_eq!(dp.egress(p), (TC_ACT_OK, p.clone()), "egress {p:02x?}");
    }
    assert_eq!(dp.counter(counters::TC_NEW_FLOW), 0);
    Ok(())
}

#[test]
fn fragments_pass_unchanged() -> Result<()> {
    let mut dp = Datapath::with_node("tcfrag")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    // A non-first fragment (offset 185 × 8 bytes) whose first bytes happen
    // to look like ports of the NodePort, and a first fragment (MF set).
    for frag in [185u16, 0x2000] {
        let mut spec = Spec::tcp((CLIENT, 40050), (NODE, NODE_PORT), TCP_SYN).payload(&[7; 32]);
        spec.frag = frag;
        let p = spec.build();
        assert_eq!(dp.ingress(&p), (TC_ACT_OK, p.clone()), "frag {frag:#x}");
    }
    assert_eq!(dp.counter(counters::TC_PASS_FRAGMENT), 2);
    assert_eq!(dp.counter(counters::TC_NEW_FLOW), 0);
    Ok(())
}

#[test]
fn packets_with_ip_options_are_translated_at_the_right_offsets() -> Result<()> {
    let mut dp = Datapath::with_node("tcopts")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let mut spec = Spec::tcp((CLIENT, 40060), (NODE, NODE_PORT), TCP_SYN).payload(b"xyz");
    // NOP, NOP, then a Router Alert option (4 bytes), then NOP padding.
    spec.ip_options = vec![1, 1, 0x94, 4, 0, 0, 1, 1];
    let syn = spec.build();
    let (rc, out) = dp.ingress(&syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let v = view(&out)?;
    assert_eq!(v.l4_off, packet::ETH_HLEN + 28);
    assert_eq!((v.src.0, v.dst), (NODE, (REMOTE_POD, TARGET_PORT)));
    verify_checksums(&out)?;
    assert_only_nat_fields_changed(&syn, &out);
    Ok(())
}

/// Every prefix of a valid NodePort packet, with the IP total length as
/// built (claims more than is there) and as cut (consistent but short): the
/// program either passes it unchanged, drops it, or — only when the headers
/// are complete — translates it correctly. Never a wrong rewrite.
#[test]
fn truncated_packets_are_never_mis_rewritten() -> Result<()> {
    let mut dp = Datapath::with_node("tctrunc")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    let mut udp_dp_specs = Vec::new();
    nodeport_udp(&mut dp, &[Be(LOCAL_POD, 5353, true)]);
    for (i, mut spec) in [
        Spec::tcp((CLIENT, 0), (NODE, NODE_PORT), TCP_SYN).payload(b"0123456789"),
        Spec::udp((CLIENT, 0), (NODE, 30053)).payload(b"0123456789"),
    ]
    .into_iter()
    .enumerate()
    {
        spec.ip_options = vec![1, 1, 1, 1];
        udp_dp_specs.push((i, spec));
    }
    let mut translated = 0;
    let mut sport = 20000;
    for (_, spec) in &udp_dp_specs {
        let full_len = spec.clone().build().len();
        for fix_len in [false, true] {
            for len in 0..=full_len {
                sport += 1;
                let mut s = spec.clone();
                s.src.1 = sport;
                let full = s.build();
                let mut p = full[..len].to_vec();
                if fix_len && len >= packet::ETH_HLEN + 4 {
                    let tot = (len - packet::ETH_HLEN) as u16;
                    p[packet::ETH_HLEN + 2..packet::ETH_HLEN + 4]
                        .copy_from_slice(&tot.to_be_bytes());
                    // A consistent header: its checksum covers the new length.
                    let ip_end = packet::ETH_HLEN + 24;
                    if len >= ip_end {
                        p[packet::ETH_HLEN + 10..packet::ETH_HLEN + 12].fill(0);
                        let c = packet::checksum(&[&p[packet::ETH_HLEN..ip_end]]);
                        p[packet::ETH_HLEN + 10..packet::ETH_HLEN + 12]
                            .copy_from_slice(&c.to_be_bytes());
                    }
                    // And a valid L4 checksum over what is left, when the
                    // L4 header is complete.
                    let csum_at = ip_end + if s.proto == TCP { 16 } else { 6 };
                    if len >= csum_at + 2 {
                        p[csum_at..csum_at + 2].fill(0);
                        let c = packet::l4_checksum(s.src.0, s.dst.0, s.proto, &p[ip_end..]);
                        p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
                    }
                }
                let r = dp.run("tc_ingress", &p);
                let r = match r {
                    // The kernel refuses test packets shorter than an
                    // Ethernet header, and (6.18) IPv4 ones shorter than
                    // an IPv4 header, before the program runs.
                    Err(e) if len < packet::ETH_HLEN + 20 => {
                        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
                        continue;
                    }
                    other => other.with_context(|| format!("len {len}"))?,
                };
                ensure!(
                    r.retval == TC_ACT_OK || r.retval == TC_ACT_SHOT,
                    "len {len}: verdict {}",
                    r.retval
                );
                if r.data == p {
                    continue;
                }
                // Rewritten: only a packet whose headers are all there, and
                // then correctly.
                ensure!(
                    fix_len || len == full_len,
                    "len {len}: rewrote a packet whose IP length lies"
                );
                let hdrs = packet::ETH_HLEN + 24 + if s.proto == TCP { 20 } else { 8 };
                ensure!(len >= hdrs, "len {len}: rewrote a packet with cut headers");
                let v = view(&r.data)?;
                ensure!(
                    v.dst.0 == LOCAL_POD,
                    "len {len}: wrong destination {:?}",
                    v.dst
                );
                if fix_len || len == full_len {
                    verify_checksums(&r.data).with_context(|| format!("len {len}"))?;
                }
                translated += 1;
            }
        }
    }
    // The complete packets (and consistent cuts inside the payload) must
    // have been translated, or the test proves nothing.
    assert!(translated >= 4, "only {translated} prefixes translated");
    Ok(())
}

#[test]
fn the_agents_node_addresses_decide_where_nodeports_answer() -> Result<()> {
    use proxy_agent::node_addrs;
    let mut dp = Datapath::new("tcnodeaddr")?;
    nodeport_tcp(&mut dp, &[Be(REMOTE_POD, TARGET_PORT, false)]);
    let filtered_out = Ipv4Addr::new(172, 16, 0, 1);
    let selected = node_addrs::select(
        &[Ipv4Addr::LOCALHOST, NODE, filtered_out],
        &["10.0.0.0/24".parse()?],
    );
    assert_eq!(selected, [NODE]);
    let pin_dir = dp.bpffs.path().join(names::PIN_DIR);
    // A stale address from an earlier run must disappear.
    dp.node_addr(filtered_out, filtered_out, node_flags::NODEPORT);
    node_addrs::program(&pin_dir, &node_addrs::entries(&selected))?;

    let syn = Spec::tcp((CLIENT, 40070), (NODE, NODE_PORT), TCP_SYN).build();
    let (_, out) = dp.ingress(&syn);
    assert_eq!(view(&out)?.dst, (REMOTE_POD, TARGET_PORT));
    assert_eq!(view(&out)?.src.0, NODE, "SNAT to the node address");
    let syn = Spec::tcp((CLIENT, 40071), (filtered_out, NODE_PORT), TCP_SYN).build();
    assert_eq!(
        dp.ingress(&syn),
        (TC_ACT_OK, syn.clone()),
        "filtered address"
    );
    Ok(())
}

// ICMP errors about translated flows (`proxy_common::icmp_error`). Expected
// packets are built from what each peer sent, never from the program's
// output; every checksum is recomputed from scratch.

const FRAG_NEEDED: (u8, u8) = (3, 4);
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const TTL_EXCEEDED: (u8, u8) = (11, 0);
/// A router on the overlay, towards the backends behind it.
const OVERLAY_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 1);
/// A router on the client's side.
const CLIENT_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The first `len` bytes of `pkt` from its IPv4 header on, as an ICMP
/// error quotes it.
fn quote(pkt: &[u8], len: usize) -> Vec<u8> {
    pkt[packet::ETH_HLEN..packet::ETH_HLEN + len].to_vec()
}

/// The quote an ICMP error carries (after the 8-byte ICMP header).
fn quoted(pkt: &[u8]) -> &[u8] {
    &pkt[packet::ETH_HLEN + 28..]
}

/// Asserts an ICMP error as its receiver must see it: from `src` to `dst`,
/// type, code and second word kept, the TTL lowered by `hops`, and the
/// quote byte for byte `want`; every checksum right.
fn assert_error(
    out: &[u8],
    (src, dst): (Ipv4Addr, Ipv4Addr),
    input: &[u8],
    hops: u8,
    want: &[u8],
) -> Result<()> {
    let ip = &out[packet::ETH_HLEN..];
    ensure!(ip[12..16] == src.octets(), "outer source {:?}", &ip[12..16]);
    ensure!(
        ip[16..20] == dst.octets(),
        "outer destination {:?}",
        &ip[16..20]
    );
    ensure!(ip[8] == TTL - hops, "TTL {}", ip[8]);
    let inp = &input[packet::ETH_HLEN..];
    ensure!(ip[20..22] == inp[20..22], "type and code kept");
    ensure!(ip[24..28] == inp[24..28], "second ICMP word (MTU) kept");
    ensure!(out.len() == input.len(), "length kept");
    packet::verify_icmp_checksums(out)?;
    ensure!(
        quoted(out) == want,
        "quote\n got {:02x?}\nwant {:02x?}",
        quoted(out),
        want
    );
    // The quoted IPv4 header's own checksum, from scratch.
    ensure!(
        packet::checksum(&[&quoted(out)[..20]]) == 0,
        "quoted IPv4 checksum"
    );
    Ok(())
}

/// A NodePort flow through this node to the backend behind the overlay:
/// the SYN, then a full-size data segment as the client sent it and as it
/// left for the backend.
fn overlay_flow(dp: &mut Datapath, sport: u16) -> Result<(Vec<u8>, Vec<u8>)> {
    nodeport_tcp(dp, &[Be(OVERLAY_POD, TARGET_PORT, false)]);
    let syn = Spec::tcp((CLIENT, sport), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_REDIRECT);
    let data = Spec::tcp((CLIENT, sport), (NODE, NODE_PORT), TCP_ACK)
        .payload(&[0x5a; 1200])
        .build();
    let (rc, fwd) = dp.ingress(&data);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(view(&fwd)?.src.0, OVERLAY_ADDR);
    Ok((data, fwd))
}

#[test]
fn frag_needed_about_a_forwarded_packet_reaches_the_client_about_its_own_packet() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmpfw")?;
    let (data, fwd) = overlay_flow(&mut dp, 40100)?;
    let mut translated = 0;
    // RFC 792's 8 bytes of L4, a full TCP header, and Linux's 576 bytes.
    for len in [28, 40, 576 - 28] {
        let icmp = packet::icmp_error(
            OVERLAY_ROUTER,
            OVERLAY_ADDR,
            FRAG_NEEDED,
            1300,
            &quote(&fwd, len),
        );
        // As the client sent it, seen one hop further (this node's).
        let want = quote(&packet::after_hops(&data, 1), len);
        for program in ["tc_ingress", "tc_reply"] {
            let r = dp.run(program, &icmp)?;
            ensure!(r.retval == TC_ACT_REDIRECT, "{program}: {}", r.retval);
            assert_error(&r.data, (NODE, CLIENT), &icmp, 1, &want)
                .with_context(|| format!("{program}, quote of {len}"))?;
            translated += 1;
        }
        // The same error from an L3 overlay (no Ethernet header): it gets
        // one and goes the same way.
        let (rc, out) = dp.reply_l3(&icmp);
        ensure!(rc == TC_ACT_REDIRECT, "tc_reply_l3: {rc}");
        assert_error(&out, (NODE, CLIENT), &icmp, 1, &want)
            .with_context(|| format!("tc_reply_l3, quote of {len}"))?;
        translated += 1;
    }
    assert_eq!(dp.counter(counters::TC_ICMP_TRANSLATED), translated);
    assert_eq!(dp.counter(counters::TC_ICMP_PASS_UNKNOWN), 0);
    Ok(())
}

#[test]
fn udp_time_exceeded_with_an_8_byte_quote_keeps_the_quoted_udp_checksum() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmpudp")?;
    nodeport_udp(&mut dp, &[Be(OVERLAY_POD, 5353, false)]);
    let query = Spec::udp((CLIENT, 5000), (NODE, 30053))
        .payload(b"a query of some length")
        .build();
    let (rc, fwd) = dp.ingress(&query);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let icmp = packet::icmp_error(
        OVERLAY_ROUTER,
        OVERLAY_ADDR,
        TTL_EXCEEDED,
        0,
        &quote(&fwd, 28),
    );
    let want = quote(&packet::after_hops(&query, 1), 28);
    for (program, (rc, out)) in [
        ("tc_ingress", dp.ingress(&icmp)),
        ("tc_reply_l3", dp.reply_l3(&icmp)),
    ] {
        ensure!(rc == TC_ACT_REDIRECT, "{program}: {rc}");
        assert_error(&out, (NODE, CLIENT), &icmp, 1, &want).context(program)?;
    }
    Ok(())
}

#[test]
fn frag_needed_from_the_clients_side_about_a_reply_reaches_the_backend() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmprp")?;
    let (_, fwd) = overlay_flow(&mut dp, 40101)?;
    let snat_port = view(&fwd)?.src.1;
    // The backend's reply, full size, and how it left towards the client.
    let reply = Spec::tcp(
        (OVERLAY_POD, TARGET_PORT),
        (OVERLAY_ADDR, snat_port),
        TCP_ACK,
    )
    .payload(&[0xa5; 1400])
    .build();
    let (rc, back) = dp.reply(&reply);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(view(&back)?.src, (NODE, NODE_PORT));
    // A router between this node and the client cannot forward it.
    for len in [28, 48] {
        let icmp = packet::icmp_error(CLIENT_ROUTER, NODE, FRAG_NEEDED, 1280, &quote(&back, len));
        let (rc, out) = dp.ingress(&icmp);
        ensure!(rc == TC_ACT_REDIRECT, "rc {rc}");
        // From the address the backend talks to, about its own packet.
        let want = quote(&packet::after_hops(&reply, 1), len);
        assert_error(&out, (OVERLAY_ADDR, OVERLAY_POD), &icmp, 1, &want)
            .with_context(|| format!("quote of {len}"))?;
    }
    assert_eq!(dp.counter(counters::TC_ICMP_TRANSLATED), 2);
    Ok(())
}

#[test]
fn errors_about_flows_the_stack_forwards_are_translated_for_the_stack() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmplo")?;
    nodeport_tcp(&mut dp, &[Be(LOCAL_POD, TARGET_PORT, true)]);
    nodeport_udp(&mut dp, &[Be(LOCAL_POD, 5353, true)]);
    // From the client's side about a reply (SNATed at egress): only the
    // destination changes, and the stack forwards it to the pod.
    let syn = Spec::tcp((CLIENT, 40102), (NODE, NODE_PORT), TCP_SYN).build();
    assert_eq!(dp.ingress(&syn).0, TC_ACT_OK);
    let reply = Spec::tcp((LOCAL_POD, TARGET_PORT), (CLIENT, 40102), TCP_ACK)
        .payload(&[1; 1400])
        .build();
    let (_, left) = dp.egress(&reply);
    assert_eq!(view(&left)?.src, (NODE, NODE_PORT));
    let icmp = packet::icmp_error(CLIENT_ROUTER, NODE, FRAG_NEEDED, 1280, &quote(&left, 28));
    let (rc, out) = dp.ingress(&icmp);
    ensure!(rc == TC_ACT_OK, "rc {rc}");
    assert_error(
        &out,
        (CLIENT_ROUTER, LOCAL_POD),
        &icmp,
        0,
        &quote(&reply, 28),
    )?;
    // The local backend refuses a datagram the stack forwarded to it:
    // its port unreachable leaves as if from the NodePort.
    let query = Spec::udp((CLIENT, 5001), (NODE, 30053))
        .payload(b"q")
        .build();
    let (rc, dnated) = dp.ingress(&query);
    assert_eq!(rc, TC_ACT_OK);
    let len = dnated.len() - packet::ETH_HLEN;
    let icmp = packet::icmp_error(LOCAL_POD, CLIENT, PORT_UNREACHABLE, 0, &quote(&dnated, len));
    let (rc, out) = dp.egress(&icmp);
    ensure!(rc == TC_ACT_OK, "rc {rc}");
    assert_error(&out, (NODE, CLIENT), &icmp, 0, &quote(&query, len))?;
    assert_eq!(dp.counter(counters::TC_ICMP_TRANSLATED), 2);
    Ok(())
}

#[test]
fn icmp_errors_about_nothing_of_ours_pass_byte_for_byte() -> Result<()> {
    let mut dp = Datapath::with_node("tcicmpno")?;
    let (_, fwd) = overlay_flow(&mut dp, 40103)?;
    let unknown = Spec::tcp((OVERLAY_ADDR, 1234), (OVERLAY_POD, 80), TCP_ACK).build();
    let mut fragment = fwd.clone();
    fragment[packet::ETH_HLEN + 6..packet::ETH_HLEN + 8].copy_from_slice(&[0x20, 0x10]);
    let mut echo = Spec::tcp((OVERLAY_ROUTER, 0), (OVERLAY_ADDR, 0), 0);
    echo.proto = packet::ICMP;
    let cases = [
        // A flow nobody translated.
        (
            "unknown flow",
            packet::icmp_error(
                OVERLAY_ROUTER,
                OVERLAY_ADDR,
                FRAG_NEEDED,
                1300,
                &quote(&unknown, 28),
            ),
            counters::TC_ICMP_PASS_UNKNOWN,
        ),
        // Sent elsewhere than to the quoted packet's source.
        (
            "misdirected",
            packet::icmp_error(OVERLAY_ROUTER, CLIENT, FRAG_NEEDED, 1300, &quote(&fwd, 28)),
            counters::TC_ICMP_PASS_UNKNOWN,
        ),
        // A quoted non-first fragment carries no ports.
        (
            "fragment",
            packet::icmp_error(
                OVERLAY_ROUTER,
                OVERLAY_ADDR,
                FRAG_NEEDED,
                1300,
                &quote(&fragment, 28),
            ),
            counters::TC_ICMP_PASS_UNKNOWN,
        ),
        // Too short a quote to hold the ports.
        (
            "short quote",
            packet::icmp_error(
                OVERLAY_ROUTER,
                OVERLAY_ADDR,
                FRAG_NEEDED,
                1300,
                &quote(&fwd, 22),
            ),
            counters::TC_PASS_MALFORMED,
        ),
        ("echo", echo.build(), u32::MAX),
    ];
    for (what, pkt, reason) in cases {
        let before = (reason != u32::MAX).then(|| dp.counter(reason));
        for program in ["tc_ingress", "tc_reply", "tc_egress"] {
            let r = dp.run(program, &pkt)?;
            ensure!(
                (r.retval, &r.data) == (TC_ACT_OK, &pkt),
                "{what} on {program}: {} {:02x?}",
                r.retval,
                r.data
            );
        }
        let (rc, out) = dp.reply_l3(&pkt);
        ensure!(
            (rc, &out[..]) == (TC_ACT_OK, &pkt[packet::ETH_HLEN..]),
            "{what} on tc_reply_l3"
        );
        if let Some(before) = before {
            ensure!(dp.counter(reason) > before, "{what}: counted");
        }
    }
    assert_eq!(dp.counter(counters::TC_ICMP_TRANSLATED), 0);
    Ok(())
}
