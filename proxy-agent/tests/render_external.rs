//! Rendering of the external frontends (NodePort, externalIPs, LoadBalancer
//! IPs) for the TC datapath: flags on the master entry, node-local backends.
mod common;

use std::net::Ipv4Addr;

use proxy_agent::datapath::{render, Ids};
use proxy_common::{proto, svc_flags, ServiceKey, BACKEND_FLAG_LOCAL};

fn yaml(etp: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.1
  externalIPs: [192.0.2.10]
  externalTrafficPolicy: {etp}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]
status:
  loadBalancer:
    ingress: [{{ip: 198.51.100.1}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [10.244.1.5], nodeName: n1}}
- {{addresses: [10.244.2.6], nodeName: n2}}
"
    )
}

fn master_flags(state: &proxy_agent::datapath::MapState, ip: Ipv4Addr, port: u16) -> (u16, u16) {
    let m = state
        .services
        .get(&ServiceKey::new(ip, port, proto::TCP, 0))
        .unwrap_or_else(|| panic!("no master for {ip}:{port}"));
    (m.flags, m.count)
}

#[test]
fn external_frontends_are_rendered_with_the_external_flag_and_cluster_ips_without() {
    let out = common::build_on(&yaml("Cluster"), "n1", None);
    let state = render(&out.state, &mut Ids::default()).state;
    assert_eq!(
        master_flags(&state, Ipv4Addr::new(10, 96, 0, 1), 80),
        (0, 2)
    );
    for (ip, port) in [
        (Ipv4Addr::UNSPECIFIED, 30080),
        (Ipv4Addr::new(192, 0, 2, 10), 80),
        (Ipv4Addr::new(198, 51, 100, 1), 80),
    ] {
        assert_eq!(master_flags(&state, ip, port), (svc_flags::EXTERNAL, 2));
    }
    let local: Vec<(Ipv4Addr, bool)> = state
        .backends
        .values()
        .map(|b| (b.ip(), b.state & BACKEND_FLAG_LOCAL != 0))
        .collect();
    assert!(
        local.contains(&(Ipv4Addr::new(10, 244, 1, 5), true)),
        "{local:?}"
    );
    assert!(
        local.contains(&(Ipv4Addr::new(10, 244, 2, 6), false)),
        "{local:?}"
    );
}

#[test]
fn etp_local_frontends_carry_the_flag_and_only_local_backends() {
    let out = common::build_on(&yaml("Local"), "n2", None);
    let state = render(&out.state, &mut Ids::default()).state;
    assert_eq!(
        master_flags(&state, Ipv4Addr::UNSPECIFIED, 30080),
        (svc_flags::EXTERNAL | svc_flags::ETP_LOCAL, 1)
    );
    // The ClusterIP keeps both endpoints and no flag.
    assert_eq!(
        master_flags(&state, Ipv4Addr::new(10, 96, 0, 1), 80),
        (0, 2)
    );
    // A node without local endpoints renders the frontend empty (drop).
    let out = common::build_on(&yaml("Local"), "n3", None);
    let state = render(&out.state, &mut Ids::default()).state;
    assert_eq!(
        master_flags(&state, Ipv4Addr::UNSPECIFIED, 30080),
        (svc_flags::EXTERNAL | svc_flags::ETP_LOCAL, 0)
    );
}

#[test]
fn etp_local_frontends_get_an_in_cluster_view_with_every_backend_under_the_same_rev_nat_id() {
    let out = common::build_on(&yaml("Local"), "n2", None);
    let state = render(&out.state, &mut Ids::default()).state;
    for (ip, port) in [
        (Ipv4Addr::UNSPECIFIED, 30080),
        (Ipv4Addr::new(192, 0, 2, 10), 80),
        (Ipv4Addr::new(198, 51, 100, 1), 80),
    ] {
        let node = ServiceKey::new(ip, port, proto::TCP, 0);
        let inner = node.in_cluster();
        let (Some(node_view), Some(in_cluster)) =
            (state.services.get(&node), state.services.get(&inner))
        else {
            panic!("{ip}:{port}: both views expected: {state:?}");
        };
        assert_eq!(in_cluster.count, 2, "{ip}:{port}");
        assert_eq!(in_cluster.flags, 0, "not external: TC never reads it");
        assert_eq!(in_cluster.rev_nat_id, node_view.rev_nat_id);
        let backends: Vec<(Ipv4Addr, bool)> = (1..=in_cluster.count)
            .map(|slot| {
                let id = state.services[&inner.with_slot(slot)].backend_id;
                let be = state.backends[&id];
                (be.ip(), be.state & BACKEND_FLAG_LOCAL != 0)
            })
            .collect();
        assert_eq!(
            backends,
            [
                (Ipv4Addr::new(10, 244, 1, 5), false),
                (Ipv4Addr::new(10, 244, 2, 6), true)
            ]
        );
    }
    let cluster_ip = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 1), 80, proto::TCP, 0);
    assert!(!state.services.contains_key(&cluster_ip.in_cluster()));
    // With eTP=Cluster there is one view.
    let out = common::build_on(&yaml("Cluster"), "n2", None);
    let state = render(&out.state, &mut Ids::default()).state;
    assert!(state.services.keys().all(|k| k.scope == 0));
}
