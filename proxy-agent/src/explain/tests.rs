//! The decision walked over hand-made maps, one kernel rule per test.
use std::net::Ipv4Addr;

use proxy_common::{
    ct_dir, ct_flags, ct_state, node_flags, proto, svc_flags, AffinityKey, AffinityValue,
    BackendValue, CtKey, CtValue, NodeAddrValue, ServiceKey, ServiceValue, AFFINITY_CLIENT_IP,
};

use super::*;
use crate::{datapath::SourceRangeEntry, model::Protocol};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
const LB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
const NOW: u32 = 1000;

fn be(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, 2)
}

/// A frontend view: master and slots naming `ids` (backend `i` is
/// 10.244.i.2:8080, local when `i == 1`).
fn frontend(s: &mut Snapshot, key: ServiceKey, rev: u16, flags: u16, aff: u32, ids: &[u32]) {
    let master = ServiceValue::master(ids.len() as u16, rev, flags, aff);
    s.maps.services.insert(key, master);
    for (n, id) in ids.iter().enumerate() {
        let slot = key.with_slot(n as u16 + 1);
        s.maps
            .services
            .insert(slot, ServiceValue::slot(&master, *id));
        let b = BackendValue::new(be(*id as u8), 8080, key.proto);
        s.maps
            .backends
            .insert(*id, if *id == 1 { b.local() } else { b });
    }
    s.maps
        .names
        .insert(u32::from(rev), format!("default/svc{rev}:http"));
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        now_s: NOW,
        ..Default::default()
    };
    let tcp = proto::TCP;
    frontend(
        &mut s,
        ServiceKey::new(VIP, 80, tcp, 0),
        1,
        0,
        300,
        &[1, 2, 2],
    );
    let np = ServiceKey::new(Ipv4Addr::UNSPECIFIED, 30080, tcp, 0);
    let local = svc_flags::EXTERNAL | svc_flags::ETP_LOCAL;
    frontend(&mut s, np, 2, local, 0, &[1]);
    frontend(&mut s, np.in_cluster(), 2, 0, 0, &[1, 2]);
    let ranged = svc_flags::EXTERNAL | svc_flags::SOURCE_RANGES;
    frontend(
        &mut s,
        ServiceKey::new(LB, 80, tcp, 0),
        3,
        ranged,
        0,
        &[1, 2],
    );
    let reject = svc_flags::EXTERNAL | svc_flags::REJECT;
    frontend(
        &mut s,
        ServiceKey::new(Ipv4Addr::UNSPECIFIED, 30090, tcp, 0),
        4,
        reject,
        0,
        &[],
    );
    s.maps.source_ranges.insert(SourceRangeEntry {
        rev_nat_id: 3,
        net: Ipv4Addr::new(192, 168, 50, 0),
        len: 24,
    });
    s.node_addrs.insert(
        u32::from_ne_bytes(NODE.octets()),
        NodeAddrValue::new(NODE, node_flags::NODEPORT),
    );
    s
}

fn query(view: View, src: Option<(Ipv4Addr, Option<u16>)>, dst: Ipv4Addr, port: u16) -> Query {
    Query {
        view,
        src,
        dst,
        dport: port,
        proto: Protocol::Tcp,
        netns_cookie: None,
    }
}

#[test]
fn a_cluster_ip_lists_its_candidates_by_weight() {
    let ex = explain(&query(View::Socket, None, VIP, 80), &snapshot());
    let fe = ex.frontend.as_ref().expect("matched");
    assert_eq!(fe.service, "default/svc1:http");
    assert_eq!(fe.matched_as, "ClusterIP");
    let weights: Vec<(String, u16, u16)> = ex
        .candidates
        .iter()
        .map(|c| (c.backend.clone(), c.weight, c.of))
        .collect();
    assert_eq!(
        weights,
        [
            ("10.244.1.2:8080".into(), 1, 3),
            ("10.244.2.2:8080".into(), 2, 3)
        ]
    );
    assert_eq!(ex.verdict.action, "translate");
    assert_eq!(ex.verdict.backend, None);
}

#[test]
fn a_socket_client_is_pinned_by_its_netns_cookie_while_fresh() {
    let mut s = snapshot();
    let key = |client| AffinityKey {
        client,
        rev_nat_id: 1,
        _pad: 0,
    };
    s.affinity.insert(
        key(7),
        AffinityValue {
            backend_id: 2,
            last_used_s: NOW - 10,
        },
    );
    s.affinity.insert(
        key(8),
        AffinityValue {
            backend_id: 1,
            last_used_s: NOW - 400,
        },
    );
    let mut q = query(View::Socket, None, VIP, 80);
    let ex = explain(&q, &s);
    let a = ex.affinity.as_ref().expect("affinity");
    assert_eq!(a.client_key, None);
    assert_eq!(
        a.other_entries.len(),
        2,
        "without the cookie: every socket client"
    );
    q.netns_cookie = Some(7);
    let ex = explain(&q, &s);
    let entry = ex
        .affinity
        .as_ref()
        .and_then(|a| a.entry.clone())
        .expect("entry");
    assert_eq!(entry.expires_in_s, Some(290));
    assert_eq!(ex.verdict.backend.as_deref(), Some("10.244.2.2:8080"));
    assert!(ex.to_string().contains(
        "affinity: ClientIP, timeout 300s; client netns cookie 7 pinned to backend \
         10.244.2.2:8080 (entry expires in 290s)"
    ));
    // Expired: the kernel picks afresh.
    q.netns_cookie = Some(8);
    let ex = explain(&q, &s);
    assert_eq!(ex.verdict.backend, None);
}

#[test]
fn an_unknown_port_and_an_unknown_vip_say_so() {
    let s = snapshot();
    let ex = explain(&query(View::Socket, None, VIP, 81), &s);
    let nm = ex.no_match.as_ref().expect("no match");
    assert_eq!(nm.code, "unknown-port");
    assert!(nm
        .reason
        .starts_with("no such port: 10.96.0.10 is a frontend on 80/TCP"));
    assert_eq!(ex.verdict.action, "pass");
    let ex = explain(
        &query(View::Socket, None, Ipv4Addr::new(10, 96, 0, 99), 80),
        &s,
    );
    assert_eq!(ex.no_match.map(|n| n.code), Some("unknown-vip"));
    // A node address without that NodePort.
    let ex = explain(&query(View::FromOutside, None, NODE, 30081), &s);
    assert_eq!(ex.no_match.map(|n| n.code), Some("unknown-port"));
}

#[test]
fn from_outside_a_cluster_ip_is_not_served() {
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, None)), VIP, 80),
        &snapshot(),
    );
    assert_eq!(ex.no_match.map(|n| n.code), Some("not-external"));
}

#[test]
fn etp_local_gives_outside_the_local_view_and_sockets_the_in_cluster_one() {
    let s = snapshot();
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, None)), NODE, 30080),
        &s,
    );
    let fe = ex.frontend.as_ref().expect("matched");
    assert_eq!(
        (fe.scope.as_str(), fe.flags.clone()),
        ("node", vec!["external".into(), "etp-local".into()])
    );
    assert_eq!(ex.candidates.len(), 1);
    assert!(ex.verdict.because.contains("client address is kept"));
    let ex = explain(&query(View::Socket, None, Ipv4Addr::LOCALHOST, 30080), &s);
    let fe = ex.frontend.as_ref().expect("matched on loopback");
    assert_eq!(fe.scope, "in-cluster");
    assert_eq!(ex.candidates.len(), 2);
}

#[test]
fn source_ranges_admit_or_drop_the_client() {
    let s = snapshot();
    let ex = explain(&query(View::FromOutside, Some((CLIENT, None)), LB, 80), &s);
    let r = ex.source_ranges.expect("ranges");
    assert_eq!(
        (r.allowed, r.matched.as_deref()),
        (Some(true), Some("192.168.50.0/24"))
    );
    let other = Ipv4Addr::new(198, 51, 100, 1);
    let ex = explain(&query(View::FromOutside, Some((other, None)), LB, 80), &s);
    assert_eq!(ex.source_ranges.and_then(|r| r.allowed), Some(false));
    assert_eq!(ex.verdict.action, "drop");
}

#[test]
fn no_endpoints_is_refused_unless_a_local_policy_drops_it() {
    let mut s = snapshot();
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, None)), NODE, 30090),
        &s,
    );
    assert_eq!(ex.verdict.action, "refuse");
    let np = ServiceKey::new(Ipv4Addr::UNSPECIFIED, 30080, proto::TCP, 0);
    let flags = svc_flags::EXTERNAL | svc_flags::ETP_LOCAL;
    s.maps
        .services
        .insert(np, ServiceValue::master(0, 2, flags, 0));
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, None)), NODE, 30080),
        &s,
    );
    assert_eq!(ex.verdict.action, "drop");
}

#[test]
fn an_existing_flow_keeps_its_backend_and_affinity_is_by_client_address() {
    let mut s = snapshot();
    let k = CtKey::new(CLIENT, 40000, NODE, 30080, proto::TCP, ct_dir::FORWARD);
    let v = CtValue {
        addr_be: u32::from_ne_bytes(be(2).octets()),
        port_be: 8080u16.to_be(),
        flags: ct_flags::SNAT | ct_flags::REDIRECT,
        tcp_state: ct_state::ESTABLISHED,
        nat_addr_be: u32::from_ne_bytes(NODE.octets()),
        nat_port_be: 61000u16.to_be(),
        rev_nat_id: 2,
        backend_id: 2,
        last_seen_s: NOW - 3,
    };
    s.conntrack.insert(k, v);
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, Some(40000))), NODE, 30080),
        &s,
    );
    assert_eq!(ex.existing_flows.len(), 1);
    assert_eq!(ex.verdict.backend.as_deref(), Some("10.244.2.2:8080"));
    assert!(ex.to_string().contains(
        "existing flow: conntrack entry from 192.168.50.100:40000 → backend 10.244.2.2:8080 \
         snat 192.168.50.11:61000 established, idle 3s (confirmed table)"
    ));
    // Another port of the same client has no flow.
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, Some(40001))), NODE, 30080),
        &s,
    );
    assert!(ex.existing_flows.is_empty());
    // Affinity from outside: keyed by the tagged client address.
    let lb = ServiceKey::new(LB, 80, proto::TCP, 0);
    let flags = svc_flags::EXTERNAL;
    frontend(&mut s, lb, 3, flags, 60, &[1, 2]);
    let client = AFFINITY_CLIENT_IP | u64::from(u32::from_ne_bytes(CLIENT.octets()));
    let key = AffinityKey {
        client,
        rev_nat_id: 3,
        _pad: 0,
    };
    s.affinity.insert(
        key,
        AffinityValue {
            backend_id: 1,
            last_used_s: NOW,
        },
    );
    let ex = explain(&query(View::FromOutside, Some((CLIENT, None)), LB, 80), &s);
    let a = ex.affinity.expect("affinity");
    assert_eq!(a.client_key.as_deref(), Some("192.168.50.100"));
    assert_eq!(ex.verdict.backend.as_deref(), Some("10.244.1.2:8080"));
}

#[test]
fn json_has_the_same_steps() {
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, None)), LB, 80),
        &snapshot(),
    );
    let v = serde_json::to_value(&ex).expect("json");
    assert_eq!(v["view"], "from-outside");
    assert_eq!(v["frontend"]["service"], "default/svc3:http");
    assert_eq!(v["source_ranges"]["allowed"], true);
    assert_eq!(v["candidates"][1]["weight"], 1);
    assert_eq!(v["verdict"]["action"], "translate");
}

#[test]
fn without_a_client_port_the_flows_are_shown_but_a_new_connection_is_explained() {
    let mut s = snapshot();
    for port in [40000, 40001] {
        let k = CtKey::new(CLIENT, port, LB, 80, proto::TCP, ct_dir::FORWARD);
        let v = CtValue {
            addr_be: u32::from_ne_bytes(be(2).octets()),
            port_be: 8080u16.to_be(),
            flags: 0,
            tcp_state: ct_state::CLOSING,
            nat_addr_be: 0,
            nat_port_be: 0,
            rev_nat_id: 3,
            backend_id: 2,
            last_seen_s: NOW,
        };
        s.conntrack.insert(k, v);
    }
    let ex = explain(&query(View::FromOutside, Some((CLIENT, None)), LB, 80), &s);
    assert_eq!(ex.existing_flows.len(), 2);
    assert_eq!(
        ex.verdict.backend, None,
        "a new connection is picked at random"
    );
    let ex = explain(
        &query(View::FromOutside, Some((CLIENT, Some(40001))), LB, 80),
        &s,
    );
    assert!(
        ex.verdict.because.contains("closing: a new SYN"),
        "{:?}",
        ex.verdict
    );
}
