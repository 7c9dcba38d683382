//! Table tests of the Service/EndpointSlice semantics (kube-proxy's rules).
mod common;

use std::net::Ipv4Addr;

use proxy_agent::model::{Frontend, Protocol, SkipReason};

fn svc(ports: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  clusterIP: 10.96.0.1\n{extra_spec}  ports: {ports}\n"
    )
}

fn slice(name: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: ns\n  labels: {{kubernetes.io/service-name: s}}\naddressType: IPv4\nports: {ports}\nendpoints: {endpoints}\n"
    )
}

/// The endpoints of frontend 10.96.0.1:port/proto as "ip:port" strings.
fn endpoints_of(yaml: &str, port: u16, protocol: Protocol) -> Option<Vec<String>> {
    let out = common::build(yaml);
    let fe = Frontend {
        ip: Ipv4Addr::new(10, 96, 0, 1).into(),
        port,
        protocol,
    };
    out.state
        .frontends
        .get(&fe)
        .map(|f| f.endpoints.iter().map(|e| e.to_string()).collect())
}

#[test]
fn endpoint_ports_are_matched_to_service_ports_by_name_and_protocol() {
    let yaml = svc(
        "[{name: a, port: 80, targetPort: x}, {name: b, port: 81, protocol: UDP}]",
        "",
    ) + &slice(
        "s-1",
        "[{name: b, port: 9001, protocol: UDP}, {name: a, port: 9000}, {name: b, port: 9999, protocol: TCP}]",
        "[{addresses: [10.0.0.1]}]",
    );
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        ["10.0.0.1:9000"]
    );
    assert_eq!(
        endpoints_of(&yaml, 81, Protocol::Udp).unwrap(),
        ["10.0.0.1:9001"]
    );
    assert_eq!(
        endpoints_of(&yaml, 81, Protocol::Tcp),
        None,
        "81/TCP is not a Service port"
    );
}

#[test]
fn an_unnamed_single_port_matches_the_unnamed_slice_port() {
    let yaml = svc("[{port: 80, targetPort: 8080}]", "")
        + &slice("s-1", "[{port: 8080}]", "[{addresses: [10.0.0.1]}]");
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        ["10.0.0.1:8080"]
    );
}

#[test]
fn endpoints_from_several_slices_are_merged_and_deduplicated() {
    let yaml = svc("[{port: 80}]", "")
        + &slice(
            "s-1",
            "[{port: 80}]",
            "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]",
        )
        + &slice(
            "s-2",
            "[{port: 80}]",
            "[{addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]",
        );
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    );
}

#[test]
fn not_ready_endpoints_are_left_out_and_unknown_readiness_counts_as_ready() {
    let yaml = svc("[{port: 80}]", "")
        + &slice(
            "s-1",
            "[{port: 80}]",
            "[{addresses: [10.0.0.1], conditions: {ready: false}}, {addresses: [10.0.0.2], conditions: {}}]",
        );
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        ["10.0.0.2:80"]
    );
}

#[test]
fn a_service_without_slices_is_programmed_to_reject() {
    let yaml = svc("[{port: 80}]", "");
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn dual_stack_services_program_their_ipv4_cluster_ip() {
    let yaml = svc("[{port: 80}]", "  clusterIPs: [\"fd00::1\", 10.96.0.1]\n");
    assert!(endpoints_of(&yaml, 80, Protocol::Tcp).is_some());
}

#[test]
fn invalid_port_numbers_are_skipped_without_harming_other_ports() {
    let yaml = svc(
        "[{name: a, port: 0}, {name: b, port: 70000}, {name: c, port: 82}]",
        "",
    );
    let out = common::build(&yaml);
    let reasons: Vec<_> = out.skips.iter().map(|s| s.reason).collect();
    assert_eq!(reasons, [SkipReason::InvalidPort, SkipReason::InvalidPort]);
    assert_eq!(out.state.frontends.len(), 1);
}

#[test]
fn list_documents_and_empty_documents_are_read() {
    let yaml = "---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: ns}\n  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
    let out = common::build(yaml);
    assert!(out.skips.is_empty(), "{:?}", out.skips);
    assert_eq!(out.state.frontends.len(), 1);
}

#[test]
fn a_yaml_syntax_error_is_a_skip_not_a_crash() {
    let out = common::build("apiVersion: v1\nkind: Service\nmetadata: {name: [\n");
    assert_eq!(out.skips.len(), 1);
    assert_eq!(out.skips[0].reason, SkipReason::Unparsable);
}

/// Endpoints of frontend `ip:port/TCP` on node `node` (zone `zone`).
fn endpoints_on(
    yaml: &str,
    node: &str,
    zone: Option<&str>,
    ip: Ipv4Addr,
    port: u16,
) -> Vec<String> {
    let out = common::build_on(yaml, node, zone);
    let fe = Frontend {
        ip: ip.into(),
        port,
        protocol: Protocol::Tcp,
    };
    out.state
        .frontends
        .get(&fe)
        .map(|f| f.endpoints.iter().map(|e| e.to_string()).collect())
        .unwrap_or_else(|| panic!("no frontend {fe}: {:?}", out.state))
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

fn two_node_slice() -> String {
    slice(
        "s-1",
        "[{port: 80}]",
        "[{addresses: [10.0.0.1], nodeName: n1}, {addresses: [10.0.0.2], nodeName: n2}]",
    )
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let yaml = svc("[{port: 80}]", "  internalTrafficPolicy: Local\n") + &two_node_slice();
    assert_eq!(endpoints_on(&yaml, "n1", None, VIP, 80), ["10.0.0.1:80"]);
    let out = common::build_on(&yaml, "n3", None);
    assert!(
        out.state.frontends.values().all(|f| f.endpoints.is_empty()),
        "n3 has none: reject"
    );
    assert_eq!(out.no_local_endpoints_internal, 1);
}

#[test]
fn external_traffic_policy_local_narrows_node_ports_but_not_the_cluster_ip() {
    let yaml = svc(
        "[{port: 80, nodePort: 30080}]",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    ) + &two_node_slice();
    assert_eq!(endpoints_on(&yaml, "n2", None, ANY, 30080), ["10.0.0.2:80"]);
    assert_eq!(
        endpoints_on(&yaml, "n2", None, VIP, 80),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(
        common::build_on(&yaml, "n3", None).no_local_endpoints_external,
        1
    );
}

#[test]
fn node_ports_external_ips_and_load_balancer_ips_become_frontends() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalIPs: [192.0.2.10, bogus]\n  ports: [{port: 80, nodePort: 30080}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.1}, {ip: 198.51.100.2, ipMode: Proxy}, {hostname: lb.example}]\n";
    let out = common::build(yaml);
    let kinds: Vec<_> = out
        .state
        .frontends
        .iter()
        .map(|(fe, fs)| (fe.to_string(), fs.kind))
        .collect();
    use proxy_agent::model::FrontendKind::*;
    assert_eq!(
        kinds,
        [
            ("0.0.0.0:30080/TCP".to_string(), NodePort),
            ("10.96.0.1:80/TCP".to_string(), ClusterIp),
            ("192.0.2.10:80/TCP".to_string(), ExternalIp),
            ("198.51.100.1:80/TCP".to_string(), LoadBalancer),
        ]
    );
    assert_eq!(out.skips.len(), 1);
    assert_eq!(out.skips[0].reason, SkipReason::InvalidExternalIp);
}

#[test]
fn zone_hints_are_used_only_when_every_ready_endpoint_has_them() {
    let hinted = svc("[{port: 80}]", "  trafficDistribution: PreferClose\n")
        + &slice(
            "s-1",
            "[{port: 80}]",
            "[{addresses: [10.0.0.1], zone: a, hints: {forZones: [{name: a}]}}, {addresses: [10.0.0.2], zone: b, hints: {forZones: [{name: b}]}}]",
        );
    assert_eq!(
        endpoints_on(&hinted, "n1", Some("a"), VIP, 80),
        ["10.0.0.1:80"]
    );
    assert_eq!(
        endpoints_on(&hinted, "n1", Some("c"), VIP, 80),
        ["10.0.0.1:80", "10.0.0.2:80"],
        "no endpoint for zone c: hints ignored"
    );
    let half = hinted.replace(", hints: {forZones: [{name: b}]}", "");
    assert_eq!(
        endpoints_on(&half, "n1", Some("a"), VIP, 80),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
}

#[test]
fn node_hints_prefer_the_same_node() {
    let yaml = svc("[{port: 80}]", "  trafficDistribution: PreferSameNode\n")
        + &slice(
            "s-1",
            "[{port: 80}]",
            "[{addresses: [10.0.0.1], hints: {forNodes: [{name: n1}], forZones: [{name: a}]}}, {addresses: [10.0.0.2], hints: {forNodes: [{name: n2}], forZones: [{name: a}]}}]",
        );
    assert_eq!(
        endpoints_on(&yaml, "n2", Some("a"), VIP, 80),
        ["10.0.0.2:80"]
    );
}

#[test]
fn client_ip_affinity_carries_its_timeout_with_kube_proxys_default() {
    let with = |cfg: &str| {
        let out = common::build(&svc("[{port: 80}]", cfg));
        out.state
            .frontends
            .values()
            .next()
            .expect("frontend")
            .affinity_timeout_s
    };
    assert_eq!(with(""), 0);
    assert_eq!(with("  sessionAffinity: ClientIP\n"), 10_800);
    assert_eq!(
        with("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"),
        60
    );
}

#[test]
fn a_service_proxy_name_label_is_honoured_only_when_it_names_us() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: bpfproxy}}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
    assert!(common::build(yaml).state.frontends.is_empty());
    let ours = proxy_agent::model::ModelConfig {
        proxy_name: Some("bpfproxy".into()),
        ..Default::default()
    };
    assert_eq!(common::build_with(yaml, &ours).state.frontends.len(), 1);
}

#[test]
fn ipv6_is_modelled_per_family_but_only_ipv4_is_programmed() {
    let yaml = svc("[{port: 80}]", "  clusterIPs: [10.96.0.1, \"fd00::1\"]\n")
        + &slice("s-4", "[{port: 80}]", "[{addresses: [10.0.0.1]}]")
        + &slice("s-6", "[{port: 80}]", "[{addresses: [\"fd00::a\"]}]")
            .replace("addressType: IPv4", "addressType: IPv6");
    let out = common::build(&yaml);
    let v6 = Frontend {
        ip: "fd00::1".parse().expect("ip"),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let eps: Vec<String> = out.state.frontends[&v6]
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(eps, ["[fd00::a]:80"]);
    assert_eq!(
        endpoints_of(&yaml, 80, Protocol::Tcp).unwrap(),
        ["10.0.0.1:80"],
        "families do not mix"
    );
    let (maps, _) = common::program(&yaml);
    assert_eq!(
        maps.masters().count(),
        1,
        "only the IPv4 frontend reaches the maps"
    );
}

/// The in-cluster view of frontend `ip:port/TCP` on node `node`, if any.
fn in_cluster_on(yaml: &str, node: &str, ip: Ipv4Addr, port: u16) -> Option<Vec<String>> {
    let out = common::build_on(yaml, node, None);
    let fe = Frontend {
        ip: ip.into(),
        port,
        protocol: Protocol::Tcp,
    };
    let fs = out
        .state
        .frontends
        .get(&fe)
        .unwrap_or_else(|| panic!("no frontend {fe}: {:?}", out.state));
    fs.in_cluster
        .as_ref()
        .map(|eps| eps.iter().map(|e| e.to_string()).collect())
}

#[test]
fn in_cluster_clients_of_an_etp_local_service_get_every_endpoint_on_each_external_frontend() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.10]\n  ports: [{port: 80, nodePort: 30080}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.1}]\n".to_string()
        + &two_node_slice();
    let both = Some(vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()]);
    for (ip, port) in [
        (ANY, 30080),
        (Ipv4Addr::new(192, 0, 2, 10), 80),
        (Ipv4Addr::new(198, 51, 100, 1), 80),
    ] {
        assert_eq!(endpoints_on(&yaml, "n2", None, ip, port), ["10.0.0.2:80"]);
        assert_eq!(in_cluster_on(&yaml, "n2", ip, port), both, "{ip}:{port}");
        assert_eq!(
            in_cluster_on(&yaml, "n3", ip, port),
            both,
            "a node without endpoints: {ip}:{port}"
        );
    }
    assert_eq!(
        in_cluster_on(&yaml, "n2", VIP, 80),
        None,
        "the ClusterIP has one view"
    );
}

#[test]
fn only_etp_local_external_frontends_get_an_in_cluster_view() {
    let cluster = svc("[{port: 80, nodePort: 30080}]", "  type: NodePort\n") + &two_node_slice();
    assert_eq!(in_cluster_on(&cluster, "n1", ANY, 30080), None);
    let itp_local = svc(
        "[{port: 80, nodePort: 30080}]",
        "  type: NodePort\n  internalTrafficPolicy: Local\n",
    ) + &two_node_slice();
    assert_eq!(in_cluster_on(&itp_local, "n1", ANY, 30080), None);
}

#[test]
fn internal_traffic_policy_local_does_not_narrow_the_in_cluster_view_of_an_etp_local_node_port() {
    let yaml = svc(
        "[{port: 80, nodePort: 30080}]",
        "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n",
    ) + &two_node_slice();
    assert_eq!(endpoints_on(&yaml, "n1", None, VIP, 80), ["10.0.0.1:80"]);
    assert_eq!(
        in_cluster_on(&yaml, "n1", ANY, 30080),
        Some(vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()])
    );
}

#[test]
fn the_in_cluster_view_falls_back_to_serving_terminating_endpoints_cluster_wide() {
    let yaml = svc(
        "[{port: 80, nodePort: 30080}]",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    ) + &slice(
        "s-1",
        "[{port: 80}]",
        "[{addresses: [10.0.0.1], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}, {addresses: [10.0.0.2], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}, {addresses: [10.0.0.3], nodeName: n2, conditions: {ready: false, serving: false, terminating: true}}]",
    );
    assert_eq!(
        in_cluster_on(&yaml, "n3", ANY, 30080),
        Some(vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()])
    );
}

#[test]
fn the_health_check_counts_only_ready_local_endpoints() {
    let yaml = |n1_conditions: &str| {
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports: [{port: 80, nodePort: 30080}]\n".to_string()
            + &slice(
                "s-1",
                "[{port: 80}]",
                &format!("[{{addresses: [10.0.0.1], nodeName: n1, conditions: {n1_conditions}}}, {{addresses: [10.0.0.4], nodeName: n1, conditions: {n1_conditions}}}, {{addresses: [10.0.0.2], nodeName: n2}}]"),
            )
    };
    let local = |yaml: &str| {
        common::build_on(yaml, "n1", None)
            .health_checks
            .get(&32000)
            .map(|hc| hc.local_endpoints)
    };
    assert_eq!(local(&yaml("{ready: true}")), Some(2));
    let terminating = yaml("{ready: false, serving: true, terminating: true}");
    assert_eq!(
        local(&terminating),
        Some(0),
        "terminating pods still serve but the node is drained"
    );
    assert_eq!(
        endpoints_on(&terminating, "n1", None, ANY, 30080),
        ["10.0.0.1:80", "10.0.0.4:80"],
        "traffic that still arrives goes to the terminating local pods"
    );
}

/// A Service `ns/NAME` with a ClusterIP, one port 80 and `extra` spec lines.
fn named_svc(name: &str, cluster_ip: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  clusterIP: {cluster_ip}\n{extra}  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn a_cluster_ip_wins_over_another_services_external_ip_on_the_same_address() {
    // "a-hostile" sorts first: by name alone its externalIP would take
    // kube-dns-like "z-victim"'s ClusterIP.
    let yaml = named_svc("a-hostile", "10.96.0.50", "  externalIPs: [10.96.0.10]\n")
        + &named_svc("z-victim", "10.96.0.10", "");
    let out = common::build(&yaml);
    let fe = Frontend {
        ip: Ipv4Addr::new(10, 96, 0, 10).into(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let owner = &out.state.frontends[&fe];
    assert_eq!(&*owner.name.name, "z-victim");
    assert_eq!(owner.kind, proxy_agent::model::FrontendKind::ClusterIp);
    let conflict: Vec<_> = out
        .skips
        .iter()
        .filter(|s| s.reason == SkipReason::DuplicateFrontend)
        .collect();
    assert_eq!(conflict.len(), 1, "{:?}", out.skips);
    assert!(
        conflict[0].object.contains("a-hostile"),
        "the loser is named: {conflict:?}"
    );
    // The other way round (the ClusterIP's Service sorts first), the same.
    let yaml = named_svc("a-victim", "10.96.0.10", "")
        + &named_svc("z-hostile", "10.96.0.50", "  externalIPs: [10.96.0.10]\n");
    let out = common::build(&yaml);
    assert_eq!(&*out.state.frontends[&fe].name.name, "a-victim");
}

#[test]
fn unspecified_broadcast_multicast_loopback_and_link_local_external_addresses_are_refused() {
    let yaml = named_svc(
        "s",
        "10.96.0.1",
        "  type: LoadBalancer\n  externalIPs: [0.0.0.0, 255.255.255.255, 224.0.0.1, 127.0.0.1, 169.254.169.254, 192.0.2.7]\n",
    ) + "status:\n  loadBalancer:\n    ingress: [{ip: 0.0.0.0}, {ip: 198.51.100.9}]\n";
    let out = common::build(&yaml);
    let addresses: Vec<String> = out
        .state
        .frontends
        .keys()
        .map(|f| f.ip.to_string())
        .collect();
    assert_eq!(
        addresses,
        ["10.96.0.1", "192.0.2.7", "198.51.100.9"],
        "only routable ones"
    );
    let refused = out
        .skips
        .iter()
        .filter(|s| {
            matches!(
                s.reason,
                SkipReason::InvalidExternalIp | SkipReason::InvalidLoadBalancerIp
            )
        })
        .count();
    assert_eq!(refused, 6, "{:?}", out.skips);
}

#[test]
fn load_balancer_source_ranges_restrict_only_the_load_balancer_ips() {
    let yaml = named_svc(
        "s",
        "10.96.0.1",
        "  type: LoadBalancer\n  externalIPs: [192.0.2.7]\n  loadBalancerSourceRanges: [10.1.2.3/16, 192.168.50.100/32, fd00::/8, bogus]\n",
    ) + "status:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.9}]\n";
    let out = common::build(&yaml);
    let ranges: Vec<(String, Vec<String>)> = out
        .state
        .frontends
        .iter()
        .map(|(fe, fs)| {
            (
                fe.ip.to_string(),
                fs.source_ranges.iter().map(|c| c.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        ranges,
        [
            ("10.96.0.1".to_string(), vec![]),
            ("192.0.2.7".to_string(), vec![]),
            (
                "198.51.100.9".to_string(),
                vec!["10.1.2.3/16".to_string(), "192.168.50.100/32".to_string()]
            ),
        ],
        "only the LB IP, IPv6 ranges left to the IPv6 datapath"
    );
    assert!(
        out.skips
            .iter()
            .any(|s| s.reason == SkipReason::InvalidSourceRange),
        "{:?}",
        out.skips
    );
    // Rendered: the network addresses, and the master's flag.
    let mut ids = proxy_agent::datapath::Ids::default();
    let state = proxy_agent::datapath::render(&out.state, &mut ids).state;
    let entries: Vec<String> = state.source_ranges.iter().map(|r| r.to_string()).collect();
    assert_eq!(entries, ["10.1.0.0/16", "192.168.50.100/32"]);
    let flagged = state
        .masters()
        .filter(|(_, m)| m.flags & proxy_common::svc_flags::SOURCE_RANGES != 0)
        .count();
    assert_eq!(flagged, 1);
}

#[test]
fn a_service_over_its_budget_is_skipped_whole_and_harms_no_other() {
    // 100 ports × 700 externalIPs: the hostile tenant's ~30 KB object.
    let ports: Vec<String> = (1..=100)
        .map(|p| format!("{{name: p{p}, port: {p}}}"))
        .collect();
    let ips: Vec<String> = (0..700)
        .map(|i| format!("192.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let hostile = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: a-hostile, namespace: tenant}}\nspec:\n  clusterIP: 10.96.9.9\n  externalIPs: [{}]\n  ports: [{}]\n",
        ips.join(", "),
        ports.join(", ")
    );
    let dns = "---\napiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}, {name: metrics, port: 9153}]\n";
    let out = common::build(&(hostile + dns));
    let owners: std::collections::BTreeSet<String> = out
        .state
        .frontends
        .values()
        .map(|f| f.name.name.to_string())
        .collect();
    assert_eq!(owners, ["kube-dns".to_string()].into(), "kube-dns only");
    assert_eq!(out.state.frontends.len(), 3);
    let over: Vec<_> = out
        .skips
        .iter()
        .filter(|s| s.reason == SkipReason::OverBudget)
        .collect();
    assert_eq!(over.len(), 1, "{:?}", out.skips);
    assert!(
        over[0].detail.contains("70100 frontends"),
        "{}",
        over[0].detail
    );
    // A generous budget lets it in.
    let mut config = proxy_agent::model::ModelConfig::default();
    config.budget.frontends_per_service = 100_000;
    config.budget.backends_per_service = 1_000_000;
    let hostile_only = common::build_with(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  clusterIP: 10.96.0.1\n  externalIPs: [192.0.2.1, 192.0.2.2]\n  ports: [{name: a, port: 80}, {name: b, port: 81}]\n",
        &config,
    );
    assert_eq!(hostile_only.state.frontends.len(), 6);
}
