//! The sandbox cluster as the demo shows it: who is where, the safety net
//! checked, and the manifests written to its "API server" directory.

use anyhow::{bail, Context, Result};
use bpfproxy_tests::multinode::{
    k8s_node_name, node_ip, pod_ip, pod_name, ClusterSandbox, CLIENT_IP,
};

use super::layout::Layout;
use super::report::indent;
use super::services::{DemoService, SERVER_HTTP_PORT, SERVER_UDP_PORT, WEB};

/// Prints every namespace of the sandbox with its address and role.
pub(super) fn describe_cluster(sb: &ClusterSandbox, layout: Layout) -> Result<()> {
    println!(
        "  {:<16} {:<15} netns {}   outside the cluster, routes only to the node subnet",
        "external client",
        CLIENT_IP,
        sb.client_ns().name()
    );
    let backends = layout.backend_pods();
    for i in 1..=layout.nodes {
        let node = sb.node(i);
        println!(
            "  {:<16} {:<15} netns {}, device {}, cgroup {}, bpffs {}{}",
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
