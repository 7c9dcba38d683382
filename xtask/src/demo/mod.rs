//! `cargo xtask demo`: bpfproxy on a sandbox cluster on this machine.
//!
//! The tests' multi-node sandbox ([`ClusterSandbox`]): nodes, pods and an
//! external client, each a network namespace, joined by a bridge without an
//! uplink; no namespace has a default route. One `bpfproxy run` per node,
//! inside the node's namespace, on the node's own cgroup, bpffs and fabric
//! device, all reading one manifest directory (the sandbox's "API server").
//! Then the traffic users try first: curl from a pod to a ClusterIP, DNS-like
//! UDP, curl to every node's NodePort from outside the cluster (also the
//! node without a backend), the spread over the backends and the client
//! address they see. Every result is checked: the demo is also a smoke test
//! and fails (non-zero exit) when the traffic misbehaves.
//!
//! Everything is removed at the end, on error, and on Ctrl-C (the signal
//! only sets a flag; the sandbox's guards clean up as the demo unwinds).

mod agents;
mod answers;
mod binaries;
mod cluster;
mod hold;
mod jvm;
mod layout;
mod report;
mod services;
mod teardown;
mod traffic;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bpfproxy_tests::multinode::{
    k8s_node_name, ClusterConfig, ClusterSandbox, NetworkShape, CLIENT_IP,
};
use bpfproxy_tests::{interrupt, require_root};

use layout::Layout;
use report::{plural, Steps, Summary};
use services::{DemoService, SERVER_HTTP_PORT, SERVER_UDP_PORT};

/// The demo's command-line options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes of the sandbox cluster; the last one runs no backend (like a
    /// control-plane node).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub nodes: u8,
    /// Backend pods on each of the other nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub pods_per_node: u8,
    /// TCP connections through one NodePort to show the spread.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub requests: u64,
    /// Keep the sandbox up for SECS seconds (at most 3600) or until Ctrl-C,
    /// to try it by hand.
    #[arg(long, value_name = "SECS")]
    pub hold: Option<u64>,
    /// Use the binaries already in target/debug (no setup, no build).
    #[arg(long)]
    pub no_build: bool,
    /// How the nodes reach each other's pods: `vxlan` (flannel's VXLAN
    /// overlay, the k3s and kubeadm+flannel default), `host-gw` (routed
    /// over the one NIC), `two-nic` (a second NIC for node-to-node
    /// traffic), `l3-tunnel` (a WireGuard-shaped L3 device).
    #[arg(long, default_value = "vxlan")]
    pub network: NetworkShape,
}

/// Runs the demo; prints the summary on success, and on failure what (if
/// anything) was left behind.
pub fn run(args: Args) -> Result<()> {
    require_root().context(
        "the demo creates network namespaces, cgroups and bpffs mounts and loads \
         eBPF programs: run `cargo xtask demo` as root",
    )?;
    interrupt::install()?;
    let result = demo(&args);
    // Every guard has been dropped here, whatever happened.
    match result {
        Ok(summary) => {
            summary.print();
            Ok(())
        }
        Err(e) => {
            let left = teardown::leftovers()
                .unwrap_or_else(|why| vec![format!("(cannot check: {why:#})")]);
            if !left.is_empty() {
                eprintln!("\nleft behind: {left:?}; `cargo xtask sweep` removes leftovers");
            } else {
                println!("\nsandbox removed (namespaces, cgroups, bpffs mounts, processes)");
            }
            if interrupt::requested() {
                bail!("interrupted before the demo finished");
            }
            Err(e)
        }
    }
}

/// The seven steps, in order, each collecting its summary line. The agents
/// and the sandbox are guards: an early return (error or Ctrl-C) drops
/// them, which removes everything.
fn demo(args: &Args) -> Result<Summary> {
    let layout = Layout {
        nodes: usize::from(args.nodes),
        pods_per_node: usize::from(args.pods_per_node),
        shape: args.network,
    };
    let mut summary = Summary::default();
    let mut step = Steps::new(7);

    step.next("build bpfproxy and the probe client/server");
    let (bpfproxy, probe) = binaries::build(args.no_build)?;
    interrupt::check()?;

    step.next(&format!(
        "sandbox cluster: {} nodes, {} pods, an external client",
        layout.nodes,
        layout.nodes * layout.pods_per_node
    ));
    let started = Instant::now();
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: layout.nodes,
        pods_per_node: layout.pods_per_node,
        tcp_ports: vec![SERVER_HTTP_PORT],
        udp_ports: vec![SERVER_UDP_PORT],
        probe_bin: Some(probe),
        echo_peer: true,
        shape: layout.shape,
    })?;
    cluster::describe_cluster(&sb, layout)?;
    cluster::check_no_default_route(&sb)?;
    summary.add(
        "cluster",
        format!(
            "{} nodes ({} network), {}, {} on {}, external client {CLIENT_IP}; built in {:.2?}",
            layout.nodes,
            layout.shape,
            plural(layout.nodes * layout.pods_per_node, "pod"),
            plural(layout.backend_pods().len(), "backend"),
            layout.backend_node_names().join(", "),
            started.elapsed()
        ),
    );
    interrupt::check()?;

    let services = DemoService::all(layout);
    step.next(&format!(
        "manifests: {} in {}",
        services
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", "),
        sb.source_dir().display()
    ));
    cluster::write_manifests(&sb, &services)?;
    interrupt::check()?;

    step.next("one bpfproxy per node: its namespace, cgroup, bpffs and fabric device");
    let mut agents = agents::start_agents(&sb, &bpfproxy, &services, &mut summary)?;
    interrupt::check()?;

    step.next("traffic, as users try it first");
    traffic::traffic(&sb, layout, args.requests, &mut summary)?;
    agents::check_alive(&mut agents)?;

    // Node 1 has local backends: its dump shows locality and eTP=Local.
    let dumped = 1;
    step.next(&format!(
        "bpfproxy dump of {} (what its kernel maps hold)",
        k8s_node_name(dumped)
    ));
    agents::print_dump(&agents[dumped - 1])?;
    interrupt::check()?;

    if let Some(secs) = args.hold {
        hold::hold(&sb, layout, &mut agents, secs)?;
    }

    step.next("tear down");
    summary.add("teardown", teardown::tear_down(agents, sb)?);
    Ok(summary)
}
