//! `--hold`: the sandbox stays up to be tried by hand, with the commands
//! to try printed ready to paste into another root shell.

use std::time::{Duration, Instant};

use anyhow::Result;
use bpfproxy_tests::multinode::{k8s_node_name, node_ip, ClusterSandbox};
use bpfproxy_tests::{interrupt, process, Agent};

use super::agents::{self, dump_command};
use super::layout::Layout;
use super::services::{WEB_IP, WEB_LOCAL_NODE_PORT, WEB_NODE_PORT};

/// Upper bound for `--hold`.
const MAX_HOLD_SECS: u64 = 3600;

/// Keeps the sandbox up for `secs` seconds (at most [`MAX_HOLD_SECS`]) so
/// it can be tried by hand; Ctrl-C ends it early (and the demo then tears
/// down as usual). Fails if an agent exits meanwhile.
pub(super) fn hold(
    sb: &ClusterSandbox,
    layout: Layout,
    agents: &mut [Agent],
    secs: u64,
) -> Result<()> {
    let secs = secs.min(MAX_HOLD_SECS);
    print_try_it(sb, layout, agents, secs);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if interrupt::requested() {
            println!("\n  Ctrl-C: ending the hold");
            return Ok(());
        }
        agents::check_alive(agents)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The commands to try in another root shell, with this run's namespace,
/// cgroup and bpffs names filled in.
fn print_try_it(sb: &ClusterSandbox, layout: Layout, agents: &[Agent], secs: u64) {
    let ext = sb.client_ns().name();
    let bare = layout.bare_node();
    let (i, j) = layout.client_pod();
    println!("\nThe cluster stays up for {secs}s (Ctrl-C ends it earlier). In another root shell:");
    println!("  # the external client, outside the cluster: any node's NodePort");
    println!(
        "  ip netns exec {ext} curl http://{}:{WEB_NODE_PORT}/",
        node_ip(bare)
    );
    println!(
        "  ip netns exec {ext} sh -c 'for i in $(seq 20); do curl -s http://{}:{WEB_NODE_PORT}/; \
         done | sort | uniq -c'",
        node_ip(1)
    );
    println!(
        "  ip netns exec {ext} curl http://{}:{WEB_LOCAL_NODE_PORT}/   # eTP=Local: the real \
         client address",
        node_ip(1)
    );
    println!(
        "  # a pod: its sockets must be in its node's cgroup, where bpfproxy's socket programs \
         are attached"
    );
    println!(
        "  nsenter --net={} -- sh -c 'echo $$ > {}/cgroup.procs && exec curl -s http://{WEB_IP}/'",
        sb.pod(i, j).ns.path().display(),
        sb.node(i).cgroup.path().display()
    );
    println!("  # what each node's kernel maps hold, and its agent's log");
    for (n, agent) in agents.iter().enumerate() {
        println!(
            "  {}   # {}, log {}",
            process::describe(&dump_command(agent)),
            k8s_node_name(n + 1),
            agent.log_path().display()
        );
    }
    println!("  (any shell you start in the sandbox is killed when the demo ends)");
}
