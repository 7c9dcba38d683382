//! The agents, one per node: started, waited for until their maps hold
//! every frontend, watched, and dumped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpfproxy_tests::multinode::{k8s_node_name, ClusterSandbox};
use bpfproxy_tests::{process, Agent};

use super::report::{indent, Summary};
use super::services::{DemoService, Frontend};

/// How long an agent may take to program every frontend.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts one agent per node (TC on its fabric device) and waits until each
/// has programmed every frontend the manifests imply for its node.
pub(super) fn start_agents(
    sb: &ClusterSandbox,
    bpfproxy: &Path,
    services: &[DemoService],
    summary: &mut Summary,
) -> Result<Vec<Agent>> {
    let nodes = sb.config().nodes;
    let mut agents = Vec::new();
    for i in 1..=nodes {
        let mut cfg = sb.agent_config_with_tc(i)?;
        cfg.bin = bpfproxy.to_path_buf();
        let args: Vec<String> = cfg.run_args().iter().map(|a| process::quote(a)).collect();
        println!(
            "  {}: $ {} {}",
            k8s_node_name(i),
            cfg.bin.display(),
            args.join(" ")
        );
        agents.push(Agent::start(cfg)?);
    }
    let started = Instant::now();
    let mut ready = Vec::new();
    for (n, agent) in agents.iter_mut().enumerate() {
        let i = n + 1;
        let frontends: Vec<Frontend> = services.iter().flat_map(|s| s.frontends_on(i)).collect();
        for f in &frontends {
            agent
                .wait_for_backends(&f.vip, f.port, f.protocol, &f.backends, READY_TIMEOUT)
                .with_context(|| whose(i))?;
        }
        let t = started.elapsed();
        println!(
            "  {}: all {} frontends in its maps after {t:.2?} (log {})",
            k8s_node_name(i),
            frontends.len(),
            agent.log_path().display()
        );
        ready.push(format!("{t:.2?}"));
    }
    summary.add(
        "agents",
        format!(
            "{nodes} agents, every frontend programmed after {} (per node)",
            ready.join(", ")
        ),
    );
    Ok(agents)
}

/// Fails, naming the node, if any agent (`agents[n]` runs on node `n + 1`)
/// has exited.
pub(super) fn check_alive(agents: &mut [Agent]) -> Result<()> {
    for (n, agent) in agents.iter_mut().enumerate() {
        agent.check_alive().with_context(|| whose(n + 1))?;
    }
    Ok(())
}

/// `bpfproxy dump` of `agent`'s maps: shown, and offered to try by hand.
pub(super) fn dump_command(agent: &Agent) -> Command {
    let mut c = Command::new(&agent.config().bin);
    c.arg("dump").arg("--bpffs").arg(&agent.config().bpffs);
    c
}

/// Prints the dump command and what it shows.
pub(super) fn print_dump(agent: &Agent) -> Result<()> {
    println!("$ {}", process::describe(&dump_command(agent)));
    println!("{}", indent(&agent.dump_text()?));
    Ok(())
}

/// The context of an agent's errors: `node-2's agent`.
fn whose(node: usize) -> String {
    format!("{}'s agent", k8s_node_name(node))
}
