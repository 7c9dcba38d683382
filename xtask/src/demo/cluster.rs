//! The sandbox cluster as the demo shows it: who is where, the safety net
//! checked, and the manifests written to its "API server" directory.

use anyhow::{bail, Context, Result};
use bpfproxy_tests::multinode::{
    k8s_node_name, node_ip, pod_ip, pod_name, ClusterSandbox, NetworkShape, CLIENT_IP,
};

use super::layout::Layout;
use super::report::indent;
use super::services::{DemoService, SERVER_HTTP_PORT, SERVER_UDP_PORT, WEB};

/// How the nodes reach each other's pods, in a few words.
fn shape_text(shape: NetworkShape) -> &'static str {
    match shape {
        NetworkShape::Vxlan => {
            "flannel's VXLAN overlay: flannel.1 10.244.N.0/32 MTU 1450 over the node NIC, \
             pods on cni0 10.244.N.1/24 with MTU 1450"
        }
        NetworkShape::HostGw => "pod subnets routed via the node addresses on the one NIC",
        NetworkShape::TwoNic => {
            "clients on one NIC (192.168.50.0/24), node-to-node traffic on a second \
             (192.168.60.0/24)"
        }
        NetworkShape::L3Tunnel => {
            "an L3 tunnel shaped as WireGuard's: flannel-wg 10.244.N.0/32 MTU 1420, no \
             link-layer header (a TUN device and a UDP relay stand in for the wireguard \
             module), pods on cni0 with MTU 1420"
        }
        NetworkShape::Ipip => {
            "flannel's IPIP backend: flannel.ipip 10.244.N.0/32 MTU 1480, routes via the \
             peer node's address onlink (needs the ipip module)"
        }
        NetworkShape::WireGuard => {
            "real WireGuard as flannel's wireguard-native backend: flannel-wg 10.244.N.0/32 \
             MTU 1420, a peer per node (needs the wireguard module)"
        }
    }
}

/// Prints every namespace of the sandbox with its address and role.
pub(super) fn describe_cluster(sb: &ClusterSandbox, layout: Layout) -> Result<()> {
    println!(
        "  network shape: {} ({})",
        layout.shape,
        shape_text(layout.shape)
    );
    println!(
        "  {:<16} {:<15} netns {}   outside the cluster, routes only to the node subnet",
        "external client",
        CLIENT_IP,
        sb.client_ns().name()
    );
    let backends = layout.backend_pods();
    for i in 1..=layout.nodes {
        let node = sb.node(i);
        let to_nodes = match &node.cluster_device {
            Some(d) => format!(", to other nodes by {d} ({})", sb.snat_ip(i)),
            None => String::new(),
        };
        println!(
            "  {:<16} {:<15} netns {}, device {}{to_nodes}, cgroup {}, bpffs {}{}",
            k8s_node_name(i),
            node_ip(i),
            node.ns.name(),
            node.device,
            node.cgroup.path().display(),
            node.bpffs.path().display(),
            if i == layout.bare_node() {
                "\n                                   runs no backend (like a control-plane node)"
            } else {
                ""
            }
        );
        for j in 1..=layout.pods_per_node {
            let role = if backends.contains(&(i, j)) {
                "backend of web, web-local, kube-dns"
            } else if (i, j) == layout.client_pod() {
                "the client pod"
            } else {
                "not in any Service"
            };
            println!(
                "    {:<14} {:<15} netns {}   {role}",
                pod_name(i, j),
                pod_ip(i, j),
                sb.pod(i, j).ns.name()
            );
        }
    }
    println!(
        "  every pod and node answers \"<its name> <the client address it saw>\" on TCP \
         {SERVER_HTTP_PORT} (HTTP) and \"<its name>\" on UDP {SERVER_UDP_PORT}"
    );
    Ok(())
}

/// The sandbox's safety net: a packet bpfproxy does not translate must die
/// inside the sandbox, so no namespace may have a default route.
pub(super) fn check_no_default_route(sb: &ClusterSandbox) -> Result<()> {
    let namespaces = sb.namespaces();
    for ns in &namespaces {
        let default = ns.ip(&["-4", "route", "show", "default"])?;
        if !default.trim().is_empty() {
            bail!(
                "namespace {} has a default route ({}); refusing to go on",
                ns.name(),
                default.trim()
            );
        }
    }
    println!(
        "  no default route in any of the {} namespaces (checked): untranslated traffic dies \
         inside the sandbox",
        namespaces.len()
    );
    Ok(())
}

/// Writes one manifest file per Service, printing the table and the web
/// Service's manifest as an example.
pub(super) fn write_manifests(sb: &ClusterSandbox, services: &[DemoService]) -> Result<()> {
    println!(
        "  {:<22} {:<10} {:<11} {:<15} {:<8} ENDPOINTS",
        "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "eTP"
    );
    for s in services {
        let file = format!("{}.yaml", s.short_name());
        sb.write_manifest(&file, &s.manifest())?;
        println!("  {}", s.table_row());
    }
    let web = services
        .iter()
        .find(|s| s.name == WEB)
        .context("the demo has no web Service")?;
    println!(
        "\n  {}/{}.yaml (the others alike):\n{}",
        sb.source_dir().display(),
        web.short_name(),
        indent(&web.manifest())
    );
    Ok(())
}
